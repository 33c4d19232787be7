//! The legacy bridge's conversion: a decoded EventLogging capsule
//! (`{schema, revision, event, webHost, wiki, ...}`) into the Event Platform
//! event EventLogging's `EventLoggingLegacyConverter` would make of it, for
//! `output.format = "event_platform"`.
//!
//! Owns: which schema a capsule gets (`events.legacy_schema_versions`, else
//! the highest version of `/analytics/legacy/<name lowercased>/` in the
//! schema repositories), its stream (`eventlogging_<name>`), and the fields
//! we add: `$schema`, `meta.stream`, `dt` and `client_dt` (the receive time,
//! milliseconds, `Z`), `recvFrom`, `seqId`, `uuid` (the EventLogging
//! processor's uuid5, computed by [`crate::format::push_processor_uuid`], so
//! downstream deduplication works as with the processor; the PHP converter
//! has no seqId and uses a random uuid4), `http.request_headers.user-agent`,
//! and `http.client_ip` (the trusted-proxy rule's address) where the schema
//! has that field. The capsule's other fields are kept (for `meta` and
//! `http`, member by member), but beacond's own fields win: a capsule's
//! `$schema`, `dt`, `client_dt`, `recvFrom`, `seqId`, `uuid`, `meta.stream`,
//! `http.request_headers.user-agent` or `http.client_ip` is replaced (or
//! removed, when beacond has no value for it), and its top-level `ip` and
//! `userAgent` are removed: what the collector vouches for is never the
//! client's to say (the intake counts capsules that try, by field).
//!
//! What comes after (stream check, fill-ins, validation, topic routing, error
//! events) is [`crate::validation::EventValidator::check`]'s, as for
//! `POST /v1/events`.
//!
//! Must never: know of HTTP or Kafka, read a file, or put a capsule's text
//! into a schema URI it has not checked (names are ASCII letters, digits, `_`).

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::meta::BeaconMeta;
use crate::schema_repository::SchemaRepository;

/// The longest schema name converted.
const MAX_SCHEMA_NAME: usize = 128;

/// Why a capsule cannot be converted (the PHP converter throws).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConversionRefused {
    /// `schema` is missing, not a string, or not a plain name.
    #[error("capsule has no usable schema name")]
    NoSchemaName,
    /// Neither `events.legacy_schema_versions` nor the schema repositories
    /// know a version of the schema.
    #[error("no version of the capsule's schema is known")]
    UnknownSchema,
}

/// Where a capsule's converted event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyTarget {
    /// `/analytics/legacy/<name lowercased>/<version>`.
    pub schema_uri: String,
    /// `eventlogging_<name>`.
    pub stream: String,
    /// The schema (when the repository has it) defines `http.client_ip`.
    pub client_ip_field: bool,
}

/// The converter of one config: the per-schema version map.
#[derive(Debug, Clone, Default)]
pub struct LegacyConverter {
    versions: HashMap<String, String>,
}

impl LegacyConverter {
    /// `versions`: schema name (as the capsule spells it) -> version.
    pub fn new<'a>(versions: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        Self {
            versions: versions
                .into_iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The schema and stream of a capsule's converted event.
    pub fn target(
        &self,
        capsule: &Map<String, Value>,
        schemas: &SchemaRepository,
    ) -> Result<LegacyTarget, ConversionRefused> {
        let name = capsule
            .get("schema")
            .and_then(Value::as_str)
            .filter(|n| {
                !n.is_empty()
                    && n.len() <= MAX_SCHEMA_NAME
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .ok_or(ConversionRefused::NoSchemaName)?;
        let title = format!("/analytics/legacy/{}", name.to_ascii_lowercase());
        let (schema_uri, schema) = match self.versions.get(name) {
            Some(version) => {
                let uri = format!("{title}/{version}");
                let schema = schemas.resolve(&uri, false).ok();
                (uri, schema)
            }
            None => {
                let latest = schemas
                    .resolve(&format!("{title}/latest"), false)
                    .map_err(|_| ConversionRefused::UnknownSchema)?;
                (format!("{title}/{}", latest.version), Some(latest))
            }
        };
        Ok(LegacyTarget {
            schema_uri,
            stream: format!("eventlogging_{name}"),
            client_ip_field: schema.is_some_and(|s| s.fill_ins.client_ip),
        })
    }
}

/// The converted event of a capsule (see the module docs). `meta` is the
/// beacon's: its receive time (with milliseconds), sequence number, host
/// name, user agent and client address.
pub fn convert(
    mut capsule: Map<String, Value>,
    target: &LegacyTarget,
    meta: &BeaconMeta<'_>,
) -> Value {
    let mut uuid = Vec::with_capacity(32);
    crate::format::push_processor_uuid(meta, &mut uuid);
    let uuid = String::from_utf8_lossy(&uuid).into_owned();

    let mut dt = String::with_capacity(24);
    dt.push_str(&String::from_utf8_lossy(&meta.received.formatted()));
    dt.push_str(&format!(".{:03}Z", meta.received.millis()));

    // Attested metadata the event has no top-level place for.
    capsule.remove("ip");
    capsule.remove("userAgent");
    capsule.insert("$schema".into(), Value::String(target.schema_uri.clone()));
    capsule.insert("dt".into(), Value::String(dt.clone()));
    capsule.insert("client_dt".into(), Value::String(dt));
    capsule.insert("recvFrom".into(), Value::String(meta.hostname.to_owned()));
    capsule.insert("seqId".into(), Value::from(meta.seq.unwrap_or(0)));
    capsule.insert("uuid".into(), Value::String(uuid));

    let meta_obj = capsule
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    match meta_obj {
        Value::Object(m) => {
            m.insert("stream".into(), Value::String(target.stream.clone()));
        }
        // Not an object: ours replaces it whole (it could not carry a stream).
        other => {
            let mut m = Map::new();
            m.insert("stream".into(), Value::String(target.stream.clone()));
            *other = Value::Object(m);
        }
    }
    let user_agent = (!meta.user_agent.is_empty())
        .then(|| String::from_utf8_lossy(meta.user_agent).into_owned());
    if let Some(Value::Object(http)) = capsule.get_mut("http") {
        // The client's claims about its own request are not kept.
        http.remove("client_ip");
        if let Some(Value::Object(headers)) = http.get_mut("request_headers") {
            headers.remove("user-agent");
        }
    }
    if user_agent.is_some() || target.client_ip_field {
        let http = capsule
            .entry("http")
            .or_insert_with(|| Value::Object(Map::new()));
        if !http.is_object() {
            *http = Value::Object(Map::new());
        }
        if let Value::Object(http) = http {
            if let Some(ua) = user_agent {
                let headers = http
                    .entry("request_headers")
                    .or_insert_with(|| Value::Object(Map::new()));
                if !headers.is_object() {
                    *headers = Value::Object(Map::new());
                }
                if let Value::Object(headers) = headers {
                    headers.insert("user-agent".into(), Value::String(ua));
                }
            }
            if target.client_ip_field {
                http.insert(
                    "client_ip".into(),
                    Value::String(meta.client_ip.to_string()),
                );
            }
        }
    }
    Value::Object(capsule)
}

#[cfg(test)]
mod tests;
