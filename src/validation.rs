//! The per-event rules of the Event Platform intake, as EventGate
//! (eventgate-wikimedia) applies them, on one parsed event. Knows nothing of
//! HTTP: the caller passes what it knows of the request in [`EventContext`].
//!
//! # The steps, in order
//! 1. The event must be an object with a string `$schema` and a string
//!    `meta.stream`, else *invalid* (with an error event). EventGate answers
//!    *error* without an error event here; issue 8 asks for *invalid*.
//! 2. The schema is resolved ([`SchemaRepository::resolve`]): unknown,
//!    malformed or refused absolute URI: *error* (no error event). EventGate
//!    also loads the schema before it looks at the stream.
//! 3. The stream must be in the stream config ([`StreamConfig::lookup`]) and
//!    its `schema_title` must equal the schema's `title`, else *error*.
//! 4. Fill-ins, each only when the schema defines the field
//!    ([`FillIns`](crate::schema_repository::FillIns)) and the event lacks
//!    the key (a key present with any value, `null` included, is kept):
//!    `meta.id` (a new random UUID v4), `meta.dt` (the receive time),
//!    `dt` (the receive time; `analytics/legacy*` titles only),
//!    `meta.request_id` (`ctx.request_id`), `http.request_headers["user-agent"]`
//!    (`ctx.user_agent`), `http.client_ip` (`ctx.client_ip`, beacond's
//!    trusted-proxy rule). Missing `http` / `http.request_headers` objects are
//!    created for them; a non-object one is left alone (validation then says
//!    why). Values are not cut (EventGate cuts headers to 400 characters;
//!    beacond's HTTP layer bounds header sizes instead).
//!    Times are ISO-8601 UTC with milliseconds and `Z`: `2026-12-01T21:41:46.123Z`.
//! 5. Schema defaults ([`DefaultsTree`](crate::schema_repository::DefaultsTree)).
//! 6. Validation (draft-07, formats asserted). Valid: the event is serialized
//!    compactly into `out` and goes to `topic_prefix + stream` (no prefix for
//!    streams starting with one of `unprefixed_stream_prefixes`); a topic name
//!    Kafka would refuse is *error*. Invalid: an error event (`/error/2.1.0`)
//!    is serialized into `out` instead, for the error stream.
//!
//! The event is parsed once by the caller, mutated in place and serialized
//! once. Nothing here recurses on event data: the defaults follow the
//! schema's tree, error paths come from the validator.
//!
//! # Response items
//! As EventGate writes them in its 207/400/500 bodies:
//! `{"status": "invalid", "event": <the event, with fill-ins and defaults
//! when it got that far>, "context": {"errors": [<AJV 6 error objects>],
//! "errorsText": "..."}}` and `{"status": "error", "event": ..., "context":
//! {"message": "..."}}`.
//!
//! # Messages
//! Validation errors are written as AJV 6 writes them (`allErrors`): objects
//! `{keyword, dataPath, schemaPath, params, message}` with JavaScript-style
//! data paths (`.meta.stream`, `['user-agent']`, `[0]`) and messages such as
//! `should have required property '.stream'`, `should match format
//! "date-time"`, `should NOT have additional properties`; `errorsText` (and
//! the error event's `message`) is `'<dataPath>' <message>` joined by `, `.
//! At most [`MAX_REPORTED_ERRORS`] are listed (then `, and N more errors`),
//! each data path cut to [`MAX_DATA_PATH_BYTES`].
//!
//! # Error events
//! Valid against the real `/error/2.1.0` (`additionalProperties: false`),
//! checked with its compiled schema before they are written:
//! `$schema`, `meta {stream: error_stream, id: new UUID v4, dt: receive time,
//! domain, uri, request_id}`, `dt` (receive time), `emitter_id`, `raw_event`,
//! `errored_schema_uri`, `errored_stream_name`, `message`, `error_type`
//! (`"ValidationError"`, as EventGate). `domain`, `uri` and `request_id` are
//! the event's `meta` values when they are strings valid for the error
//! schema's field (`uri` must be a `uri-reference`, `domain` non-empty), else
//! `ctx.request_id` for `request_id`, else `"unknown"` (EventGate's word).
//! `errored_*` are the event's `$schema` / `meta.stream` when strings, else
//! `"unknown"`. `raw_event` is the event (after fill-ins) as compact JSON;
//! longer than `max_raw_event_bytes`, it is cut at a UTF-8 boundary at or below
//! the bound and [`CUT_MARK`] is appended (then it is no longer JSON, on
//! purpose). `errored_*` are cut the same way at [`MAX_ERRORED_FIELD_BYTES`].

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::schema_repository::{EventSchema, SchemaLookupError, SchemaRepository};
use crate::stream_config::{StreamConfig, StreamEntry};

/// The error events' schema.
pub const ERROR_SCHEMA_URI: &str = "/error/2.1.0";
/// Appended to a cut `raw_event` (and `errored_*`).
pub const CUT_MARK: &str = "...[cut by beacond]";
/// Validation errors listed per event.
pub const MAX_REPORTED_ERRORS: usize = 16;
/// Longest data path reported (a path can hold client-chosen property names).
pub const MAX_DATA_PATH_BYTES: usize = 256;
/// Longest `errored_schema_uri` / `errored_stream_name`, and longest client
/// value quoted in an *error* item's message.
pub const MAX_ERRORED_FIELD_BYTES: usize = 1024;
/// Longest Kafka topic name.
const MAX_TOPIC_BYTES: usize = 249;

/// What the validator needs to know of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSettings {
    /// Prefixed to a stream's name to make its topic (`events.topic_prefix`).
    pub topic_prefix: String,
    /// Streams starting with one of these get no prefix (EventGate: `eventlogging_`).
    pub unprefixed_stream_prefixes: Vec<String>,
    /// `events.service_name`.
    pub service_name: String,
    /// The error events' stream (`events.error_stream`); must be in the stream
    /// config with `schema_title: error`.
    pub error_stream: String,
    /// The error events' `emitter_id`.
    pub emitter_id: String,
    /// `events.allow_absolute_schema_uris`.
    pub allow_absolute_schema_uris: bool,
    /// Bound of an error event's `raw_event`.
    pub max_raw_event_bytes: usize,
}

impl Default for ValidatorSettings {
    fn default() -> Self {
        ValidatorSettings {
            topic_prefix: String::new(),
            unprefixed_stream_prefixes: vec!["eventlogging_".to_owned()],
            service_name: "beacond".to_owned(),
            error_stream: "beacond.error.validation".to_owned(),
            emitter_id: "beacond".to_owned(),
            allow_absolute_schema_uris: false,
            max_raw_event_bytes: 64 * 1024,
        }
    }
}

/// What the caller knows of the request an event came in.
#[derive(Clone, Copy, Debug)]
pub struct EventContext<'a> {
    /// When the request was received.
    pub received: OffsetDateTime,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// `user-agent`.
    pub user_agent: Option<&'a str>,
    /// The client address by beacond's trusted-proxy rule.
    pub client_ip: Option<IpAddr>,
}

/// Why an event is *invalid* (it gets an error event). Bounded: a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    NotAnObject,
    MissingSchema,
    MissingStream,
    SchemaValidation,
}

impl InvalidReason {
    pub const ALL: [InvalidReason; 4] = [
        Self::NotAnObject,
        Self::MissingSchema,
        Self::MissingStream,
        Self::SchemaValidation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAnObject => "not_an_object",
            Self::MissingSchema => "missing_schema",
            Self::MissingStream => "missing_stream",
            Self::SchemaValidation => "schema_validation",
        }
    }
}

/// Why an event is an *error* (no error event). Bounded: a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    UnknownStream,
    SchemaTitleMismatch,
    UnknownSchema,
    MalformedSchemaUri,
    AbsoluteSchemaUri,
    InvalidTopic,
    /// Valid, but its topic does not exist in Kafka (decided by the intake
    /// from the sink's view of the cluster).
    UnknownTopic,
    /// Valid, but larger than the producer's `message.max.bytes` (decided by
    /// the intake).
    MessageTooLarge,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 8] = [
        Self::UnknownStream,
        Self::SchemaTitleMismatch,
        Self::UnknownSchema,
        Self::MalformedSchemaUri,
        Self::AbsoluteSchemaUri,
        Self::InvalidTopic,
        Self::UnknownTopic,
        Self::MessageTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownStream => "unknown_stream",
            Self::SchemaTitleMismatch => "schema_title_mismatch",
            Self::UnknownSchema => "unknown_schema",
            Self::MalformedSchemaUri => "malformed_schema_uri",
            Self::AbsoluteSchemaUri => "absolute_schema_uri",
            Self::InvalidTopic => "invalid_topic",
            Self::UnknownTopic => "unknown_topic",
            Self::MessageTooLarge => "message_too_large",
        }
    }
}

/// A valid event: its bytes are in `out`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub topic: String,
    /// The Kafka key (`partition_key`), or `None`: random partitioning.
    pub key: Option<Vec<u8>>,
    /// The stream config key (a metric label).
    pub stream_key: Arc<str>,
}

/// An error event to produce: its bytes are in `out`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorEvent {
    pub topic: String,
    /// The error stream's config key.
    pub stream_key: Arc<str>,
}

/// An invalid event.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub reason: InvalidReason,
    /// The event's stream config key, when it got that far.
    pub stream_key: Option<Arc<str>>,
    /// The EventGate response item `{status: "invalid", event, context}`.
    pub item: Value,
    /// The error event in `out`; `None` only if one could not be made valid
    /// (a bug; logged).
    pub error_event: Option<ErrorEvent>,
}

/// An event that errored.
#[derive(Clone, Debug, PartialEq)]
pub struct Errored {
    pub reason: ErrorReason,
    pub stream_key: Option<Arc<str>>,
    /// The EventGate response item `{status: "error", event, context: {message}}`.
    pub item: Value,
}

/// What [`EventValidator::check`] decided.
#[derive(Clone, Debug, PartialEq)]
pub enum EventVerdict {
    Accepted(Accepted),
    Invalid(Invalid),
    Error(Errored),
}

/// Why an [`EventValidator`] cannot be built from this configuration.
#[derive(Debug, thiserror::Error)]
pub enum ValidatorSetupError {
    #[error("the schema repositories have no {ERROR_SCHEMA_URI} (error events need it)")]
    NoErrorSchema,
    #[error("error stream {stream:?} is not in the stream config")]
    ErrorStreamNotConfigured { stream: String },
    #[error("error stream {stream:?} has schema_title {found:?}, expected \"error\"")]
    ErrorStreamTitle { stream: String, found: String },
    #[error("error stream {stream:?} makes topic {topic:?}, not a valid Kafka topic name")]
    ErrorTopic { stream: String, topic: String },
}

impl std::fmt::Debug for EventValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventValidator")
            .field("streams", &self.streams.len())
            .field("schemas", &self.schemas.len())
            .field("error_topic", &self.error_topic)
            .finish_non_exhaustive()
    }
}

/// The per-event rules over one stream config and schema repository.
pub struct EventValidator {
    streams: Arc<StreamConfig>,
    schemas: Arc<SchemaRepository>,
    settings: ValidatorSettings,
    error_schema: Arc<EventSchema>,
    error_entry: Arc<StreamEntry>,
    error_topic: String,
    /// The error schema's own checks of `meta.domain`, `meta.uri`, `meta.request_id`.
    meta_checks: Vec<(&'static str, jsonschema::Validator)>,
}

impl EventValidator {
    pub fn new(
        streams: Arc<StreamConfig>,
        schemas: Arc<SchemaRepository>,
        settings: ValidatorSettings,
    ) -> Result<Self, ValidatorSetupError> {
        let error_schema = schemas
            .resolve(ERROR_SCHEMA_URI, false)
            .map_err(|_| ValidatorSetupError::NoErrorSchema)?
            .clone();
        let error_entry = streams
            .lookup(&settings.error_stream)
            .ok_or_else(|| ValidatorSetupError::ErrorStreamNotConfigured {
                stream: settings.error_stream.clone(),
            })?
            .clone();
        if error_entry.schema_title != error_schema.title {
            return Err(ValidatorSetupError::ErrorStreamTitle {
                stream: settings.error_stream.clone(),
                found: error_entry.schema_title.clone(),
            });
        }
        let error_topic = topic_for(&settings, &settings.error_stream);
        if !is_valid_topic(&error_topic) {
            return Err(ValidatorSetupError::ErrorTopic {
                stream: settings.error_stream.clone(),
                topic: error_topic,
            });
        }
        let raw = std::fs::read_to_string(&error_schema.path).ok();
        let raw = raw.and_then(|t| crate::schema_repository::yaml_to_json(&t).ok());
        let mut meta_checks = Vec::new();
        for field in ["domain", "uri", "request_id"] {
            let sub = raw
                .as_ref()
                .and_then(|s| s.pointer(&format!("/properties/meta/properties/{field}")));
            if let Some(v) = sub.and_then(|s| crate::schema_repository::compile(s).ok()) {
                meta_checks.push((field, v));
            }
        }
        Ok(EventValidator {
            streams,
            schemas,
            settings,
            error_schema,
            error_entry,
            error_topic,
            meta_checks,
        })
    }

    /// The topic error events go to.
    pub fn error_topic(&self) -> &str {
        &self.error_topic
    }

    pub fn settings(&self) -> &ValidatorSettings {
        &self.settings
    }

    pub fn stream_config(&self) -> &Arc<StreamConfig> {
        &self.streams
    }

    pub fn schema_repository(&self) -> &Arc<SchemaRepository> {
        &self.schemas
    }

    /// Apply the rules to one event (see the module docs). `out` is cleared,
    /// then holds the bytes to produce: the event when accepted, its error
    /// event when invalid, nothing on error.
    pub fn check(
        &self,
        mut event: Value,
        ctx: &EventContext<'_>,
        out: &mut Vec<u8>,
    ) -> EventVerdict {
        out.clear();
        // 1. Shape.
        let (schema_uri, stream) = match shape(&event) {
            Ok(found) => found,
            Err((reason, error)) => {
                let errors = vec![error];
                return self.invalid(reason, None, event, errors, 0, ctx, out);
            }
        };
        // 2. Schema.
        let schema = match self
            .schemas
            .resolve(&schema_uri, self.settings.allow_absolute_schema_uris)
        {
            Ok(s) => s.clone(),
            Err(e) => {
                let reason = match e {
                    SchemaLookupError::AbsoluteUriRefused => ErrorReason::AbsoluteSchemaUri,
                    SchemaLookupError::Unknown => ErrorReason::UnknownSchema,
                    SchemaLookupError::Malformed => ErrorReason::MalformedSchemaUri,
                };
                let message = format!("Failed loading schema at {}", cut_plain(&schema_uri));
                return errored(reason, None, event, message);
            }
        };
        // 3. Stream.
        let Some(entry) = self.streams.lookup(&stream).cloned() else {
            let message = format!(
                "{} is not allowed in stream; {} is not configured.",
                repr(&event, &schema_uri, &stream),
                cut_plain(&stream)
            );
            return errored(ErrorReason::UnknownStream, None, event, message);
        };
        if entry.schema_title != schema.title {
            let message = format!(
                "{} is not allowed in stream; schema title must be {}.",
                repr(&event, &schema_uri, &stream),
                entry.schema_title
            );
            return errored(
                ErrorReason::SchemaTitleMismatch,
                Some(entry.key.clone()),
                event,
                message,
            );
        }
        // 4, 5. Fill-ins and defaults.
        if let Value::Object(map) = &mut event {
            fill_in(&schema, map, ctx);
            schema.defaults.apply(map);
        }
        // 6. Validate.
        if !schema.validator.is_valid(&event) {
            let mut errors = Vec::new();
            let mut more = 0;
            for e in schema.validator.iter_errors(&event) {
                for a in ajv_errors(&e) {
                    if errors.len() < MAX_REPORTED_ERRORS {
                        errors.push(a);
                    } else {
                        more += 1;
                    }
                }
            }
            if errors.is_empty() {
                // is_valid and iter_errors disagree: should not happen; still invalid.
                errors.push(AjvError::plain("", "", "#", "should be valid"));
            }
            return self.invalid(
                InvalidReason::SchemaValidation,
                Some(entry.key.clone()),
                event,
                errors,
                more,
                ctx,
                out,
            );
        }
        let topic = topic_for(&self.settings, &stream);
        if !is_valid_topic(&topic) {
            let message = format!("Invalid Kafka topic name {}", cut_plain(&topic));
            return errored(
                ErrorReason::InvalidTopic,
                Some(entry.key.clone()),
                event,
                message,
            );
        }
        let key = entry.partition_key_of(&event);
        if serde_json::to_writer(&mut *out, &event).is_err() {
            // Writing a Value into a Vec cannot fail; keep the no-panic rule anyway.
            out.clear();
        }
        EventVerdict::Accepted(Accepted {
            topic,
            key,
            stream_key: entry.key.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn invalid(
        &self,
        reason: InvalidReason,
        stream_key: Option<Arc<str>>,
        event: Value,
        errors: Vec<AjvError>,
        more: usize,
        ctx: &EventContext<'_>,
        out: &mut Vec<u8>,
    ) -> EventVerdict {
        let mut text = errors
            .iter()
            .map(|e| format!("'{}' {}", e.data_path, e.message))
            .collect::<Vec<_>>()
            .join(", ");
        if more > 0 {
            text.push_str(&format!(", and {more} more errors"));
        }
        let error_event = self.error_event(&event, &text, ctx, out);
        let item = json!({
            "status": "invalid",
            "event": event,
            "context": {
                "errors": errors.into_iter().map(AjvError::into_value).collect::<Vec<_>>(),
                "errorsText": text,
            },
        });
        EventVerdict::Invalid(Invalid {
            reason,
            stream_key,
            item,
            error_event,
        })
    }

    /// Serialize the error event for `event` into `out`.
    fn error_event(
        &self,
        event: &Value,
        message: &str,
        ctx: &EventContext<'_>,
        out: &mut Vec<u8>,
    ) -> Option<ErrorEvent> {
        out.clear();
        let now = format_dt(ctx.received);
        let meta_field = |field: &str| -> Option<String> {
            let v = event.get("meta")?.get(field)?;
            let (_, check) = self.meta_checks.iter().find(|(f, _)| *f == field)?;
            (v.is_string() && check.is_valid(v)).then(|| v.as_str().map(str::to_owned))?
        };
        let request_id = meta_field("request_id")
            .or_else(|| ctx.request_id.map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        let errored = |v: Option<&Value>| match v {
            Some(Value::String(s)) => cut(s, MAX_ERRORED_FIELD_BYTES),
            _ => "unknown".to_owned(),
        };
        let mut raw = serde_json::to_string(event).unwrap_or_default();
        if raw.len() > self.settings.max_raw_event_bytes {
            raw = cut(&raw, self.settings.max_raw_event_bytes);
        }
        let error = json!({
            "$schema": ERROR_SCHEMA_URI,
            "meta": {
                "stream": self.settings.error_stream,
                "id": uuid::Uuid::new_v4().to_string(),
                "dt": now,
                "domain": meta_field("domain").unwrap_or_else(|| "unknown".to_owned()),
                "uri": meta_field("uri").unwrap_or_else(|| "unknown".to_owned()),
                "request_id": request_id,
            },
            "dt": now,
            "emitter_id": self.settings.emitter_id,
            "raw_event": raw,
            "errored_schema_uri": errored(event.get("$schema")),
            "errored_stream_name": errored(event.get("meta").and_then(|m| m.get("stream"))),
            "message": message,
            "error_type": "ValidationError",
        });
        if !self.error_schema.validator.is_valid(&error) {
            let why: Vec<String> = self
                .error_schema
                .validator
                .iter_errors(&error)
                .take(4)
                .map(|e| e.to_string())
                .collect();
            tracing::error!(errors = ?why, "an error event does not validate against {ERROR_SCHEMA_URI}; not produced");
            return None;
        }
        serde_json::to_writer(&mut *out, &error).ok()?;
        Some(ErrorEvent {
            topic: self.error_topic.clone(),
            stream_key: self.error_entry.key.clone(),
        })
    }
}

/// `($schema, meta.stream)`, or why the event is not shaped like one.
#[allow(clippy::result_large_err)] // once per event, on the cold path
fn shape(event: &Value) -> Result<(String, String), (InvalidReason, AjvError)> {
    let Value::Object(map) = event else {
        return Err((
            InvalidReason::NotAnObject,
            AjvError::type_error("", "#/type", "object"),
        ));
    };
    let schema_uri = match map.get("$schema") {
        Some(Value::String(s)) => s.clone(),
        None => {
            return Err((
                InvalidReason::MissingSchema,
                AjvError::required("", "#/required", "$schema"),
            ))
        }
        Some(_) => {
            return Err((
                InvalidReason::MissingSchema,
                AjvError::type_error(".$schema", "#/properties/%24schema/type", "string"),
            ))
        }
    };
    let stream = match map.get("meta") {
        None => {
            return Err((
                InvalidReason::MissingStream,
                AjvError::required("", "#/required", "meta"),
            ))
        }
        Some(Value::Object(meta)) => match meta.get("stream") {
            Some(Value::String(s)) => s.clone(),
            None => {
                return Err((
                    InvalidReason::MissingStream,
                    AjvError::required(".meta", "#/properties/meta/required", "stream"),
                ))
            }
            Some(_) => {
                return Err((
                    InvalidReason::MissingStream,
                    AjvError::type_error(
                        ".meta.stream",
                        "#/properties/meta/properties/stream/type",
                        "string",
                    ),
                ))
            }
        },
        Some(_) => {
            return Err((
                InvalidReason::MissingStream,
                AjvError::type_error(".meta", "#/properties/meta/type", "object"),
            ))
        }
    };
    Ok((schema_uri, stream))
}

fn fill_in(schema: &EventSchema, map: &mut Map<String, Value>, ctx: &EventContext<'_>) {
    let f = schema.fill_ins;
    let now = || Value::String(format_dt(ctx.received));
    if let Some(Value::Object(meta)) = map.get_mut("meta") {
        if f.meta_id && !meta.contains_key("id") {
            meta.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        }
        if f.meta_dt && !meta.contains_key("dt") {
            meta.insert("dt".into(), now());
        }
        if let (true, Some(rid)) = (f.meta_request_id, ctx.request_id) {
            if !meta.contains_key("request_id") {
                meta.insert("request_id".into(), Value::String(rid.to_owned()));
            }
        }
    }
    if f.dt && !map.contains_key("dt") {
        map.insert("dt".into(), now());
    }
    let ua = ctx.user_agent.filter(|_| f.user_agent);
    let ip = ctx.client_ip.filter(|_| f.client_ip);
    if ua.is_none() && ip.is_none() {
        return;
    }
    let http = map
        .entry("http")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(http) = http else {
        return;
    };
    if let Some(ua) = ua {
        let headers = http
            .entry("request_headers")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(headers) = headers {
            if !headers.contains_key("user-agent") {
                headers.insert("user-agent".into(), Value::String(ua.to_owned()));
            }
        }
    }
    if let Some(ip) = ip {
        if !http.contains_key("client_ip") {
            http.insert("client_ip".into(), Value::String(ip.to_string()));
        }
    }
}

fn errored(
    reason: ErrorReason,
    stream_key: Option<Arc<str>>,
    event: Value,
    message: String,
) -> EventVerdict {
    EventVerdict::Error(Errored {
        reason,
        stream_key,
        item: json!({"status": "error", "event": event, "context": {"message": message}}),
    })
}

/// An *error* verdict for a valid event the sink cannot take for good (its
/// topic does not exist, it is too large): `serialized` is the event as it
/// would have been produced.
pub fn errored_after_validation(
    reason: ErrorReason,
    stream_key: Arc<str>,
    serialized: &[u8],
    message: String,
) -> EventVerdict {
    let event = serde_json::from_slice(serialized).unwrap_or(Value::Null);
    errored(reason, Some(stream_key), event, message)
}

/// EventGate's `eventRepr`: `event <meta.id> of schema at <uri> destined to stream <stream>`.
fn repr(event: &Value, schema_uri: &str, stream: &str) -> String {
    let id = event
        .get("meta")
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(|id| format!(" {}", cut_plain(id)))
        .unwrap_or_default();
    format!(
        "event{id} of schema at {} destined to stream {}",
        cut_plain(schema_uri),
        cut_plain(stream)
    )
}

/// `topic_prefix + stream`, except for the unprefixed stream prefixes.
pub fn topic_for(settings: &ValidatorSettings, stream: &str) -> String {
    if settings
        .unprefixed_stream_prefixes
        .iter()
        .any(|p| stream.starts_with(p.as_str()))
    {
        stream.to_owned()
    } else {
        format!("{}{stream}", settings.topic_prefix)
    }
}

/// Kafka's rule: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `2026-12-01T21:41:46.123Z` (UTC, milliseconds), as JavaScript's `toISOString`.
pub fn format_dt(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Cut at a UTF-8 boundary at or below `max` bytes and mark it, if longer.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARK}", &s[..end])
}

/// A client value quoted in a message.
fn cut_plain(s: &str) -> String {
    cut(s, MAX_ERRORED_FIELD_BYTES)
}

/// One error as AJV 6 reports it.
#[derive(Debug)]
struct AjvError {
    keyword: String,
    data_path: String,
    schema_path: String,
    params: Value,
    message: String,
}

impl AjvError {
    fn plain(keyword: &str, data_path: &str, schema_path: &str, message: &str) -> Self {
        AjvError {
            keyword: keyword.to_owned(),
            data_path: data_path.to_owned(),
            schema_path: schema_path.to_owned(),
            params: json!({}),
            message: message.to_owned(),
        }
    }

    fn required(data_path: &str, schema_path: &str, property: &str) -> Self {
        let p = js_property(property);
        AjvError {
            keyword: "required".into(),
            data_path: data_path.into(),
            schema_path: schema_path.into(),
            message: format!("should have required property '{p}'"),
            params: json!({ "missingProperty": p }),
        }
    }

    fn type_error(data_path: &str, schema_path: &str, ty: &str) -> Self {
        AjvError {
            keyword: "type".into(),
            data_path: data_path.into(),
            schema_path: schema_path.into(),
            message: format!("should be {ty}"),
            params: json!({ "type": ty }),
        }
    }

    fn into_value(self) -> Value {
        json!({
            "keyword": self.keyword,
            "dataPath": self.data_path,
            "schemaPath": self.schema_path,
            "params": self.params,
            "message": self.message,
        })
    }
}

/// AJV 6's property accessor: `.name` for identifiers, else `['name']`.
fn js_property(name: &str) -> String {
    let mut bytes = name.bytes();
    let ident = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'$' || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'$' || b == b'_');
    if ident {
        format!(".{name}")
    } else {
        format!("['{}']", name.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

fn data_path(loc: &jsonschema::paths::Location) -> String {
    use jsonschema::paths::LocationSegment;
    let mut out = String::new();
    for seg in loc.segments() {
        match seg {
            LocationSegment::Property(p) => out.push_str(&js_property(&p)),
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
        if out.len() > MAX_DATA_PATH_BYTES {
            return cut(&out, MAX_DATA_PATH_BYTES);
        }
    }
    out
}

/// The AJV 6 error(s) for one of the crate's errors (one per unexpected property).
fn ajv_errors(e: &jsonschema::ValidationError<'_>) -> Vec<AjvError> {
    use jsonschema::error::{TypeKind, ValidationErrorKind as K};
    let kind = e.kind();
    let dp = data_path(e.instance_path());
    let sp = format!("#{}", e.schema_path().as_str());
    let one = |keyword: &str, params: Value, message: String| {
        vec![AjvError {
            keyword: keyword.to_owned(),
            data_path: dp.clone(),
            schema_path: sp.clone(),
            params,
            message,
        }]
    };
    let limit = |keyword: &str, cmp: &str, limit: &Value| {
        one(
            keyword,
            json!({"comparison": cmp, "limit": limit, "exclusive": cmp.len() == 1}),
            format!("should be {cmp} {limit}"),
        )
    };
    match kind {
        K::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|p| AjvError {
                keyword: "additionalProperties".into(),
                data_path: dp.clone(),
                schema_path: sp.clone(),
                params: json!({"additionalProperty": cut(p, MAX_DATA_PATH_BYTES)}),
                message: "should NOT have additional properties".into(),
            })
            .collect(),
        K::Required { property } => {
            let name = property
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| property.to_string());
            vec![AjvError::required(&dp, &sp, &name)]
        }
        K::Type { kind } => {
            let ty = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            };
            one("type", json!({ "type": ty }), format!("should be {ty}"))
        }
        K::Format { format } => one(
            "format",
            json!({ "format": format }),
            format!("should match format \"{format}\""),
        ),
        K::Pattern { pattern } => one(
            "pattern",
            json!({ "pattern": pattern }),
            format!("should match pattern \"{pattern}\""),
        ),
        K::MaxLength { limit } => one(
            "maxLength",
            json!({ "limit": limit }),
            format!("should NOT be longer than {limit} characters"),
        ),
        K::MinLength { limit } => one(
            "minLength",
            json!({ "limit": limit }),
            format!("should NOT be shorter than {limit} characters"),
        ),
        K::MaxItems { limit } => one(
            "maxItems",
            json!({ "limit": limit }),
            format!("should NOT have more than {limit} items"),
        ),
        K::MinItems { limit } => one(
            "minItems",
            json!({ "limit": limit }),
            format!("should NOT have fewer than {limit} items"),
        ),
        K::MaxProperties { limit } => one(
            "maxProperties",
            json!({ "limit": limit }),
            format!("should NOT have more than {limit} properties"),
        ),
        K::MinProperties { limit } => one(
            "minProperties",
            json!({ "limit": limit }),
            format!("should NOT have fewer than {limit} properties"),
        ),
        K::Maximum { limit: l } => limit("maximum", "<=", l),
        K::Minimum { limit: l } => limit("minimum", ">=", l),
        K::ExclusiveMaximum { limit: l } => limit("exclusiveMaximum", "<", l),
        K::ExclusiveMinimum { limit: l } => limit("exclusiveMinimum", ">", l),
        K::Enum { options } => one(
            "enum",
            json!({ "allowedValues": &**options }),
            "should be equal to one of the allowed values".into(),
        ),
        K::Constant { expected_value } => one(
            "const",
            json!({ "allowedValue": &**expected_value }),
            "should be equal to constant".into(),
        ),
        K::UniqueItems => one(
            "uniqueItems",
            json!({}),
            "should NOT have duplicate items".into(),
        ),
        K::MultipleOf { multiple_of } => one(
            "multipleOf",
            json!({ "multipleOf": multiple_of }),
            format!("should be multiple of {multiple_of}"),
        ),
        K::AnyOf { .. } => one(
            "anyOf",
            json!({}),
            "should match some schema in anyOf".into(),
        ),
        K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. } => one(
            "oneOf",
            json!({ "passingSchemas": null }),
            "should match exactly one schema in oneOf".into(),
        ),
        K::Not { .. } => one("not", json!({}), "should NOT be valid".into()),
        K::Contains => one("contains", json!({}), "should contain a valid item".into()),
        K::FalseSchema => one("false schema", json!({}), "boolean schema is false".into()),
        K::AdditionalItems { limit } => one(
            "additionalItems",
            json!({ "limit": limit }),
            format!("should NOT have more than {limit} items"),
        ),
        K::PropertyNames { error } => {
            let name = error
                .instance()
                .as_str()
                .map(|s| cut(s, MAX_DATA_PATH_BYTES))
                .unwrap_or_default();
            one(
                "propertyNames",
                json!({ "propertyName": name }),
                format!("property name '{name}' is invalid"),
            )
        }
        other => one(
            other.keyword(),
            json!({}),
            cut(&e.to_string(), MAX_DATA_PATH_BYTES),
        ),
    }
}

#[cfg(test)]
mod tests;
