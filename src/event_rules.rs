//! Event rules: the stream config and schema repositories of `[events]`,
//! loaded into an [`EventValidator`] at start-up, by `--check`, and again on
//! `SIGHUP`.
//!
//! Owns the file reading and compiling that the request path must never do:
//! it runs before the listener starts, or on a blocking thread for a reload.
//! A reload that fails keeps the rules in force (logged, counted); one that
//! succeeds replaces them whole, so a request sees the old rules or the new,
//! never a mix.
//!
//! Must never: run on the async request path, or leave the intake without
//! rules.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;

use crate::config::EventsConfig;
use crate::metrics::{CounterSet, LabelSet, Metrics};
use crate::schema_repository::{SchemaRepository, SchemaRepositoryError};
use crate::stream_config::{MissingSchemas, StreamConfig, StreamConfigError};
use crate::validation::{EventValidator, ValidatorSettings, ValidatorSetupError};

/// The longest `raw_event` an error event carries.
pub const MAX_RAW_EVENT_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EventRulesError {
    #[error("events.stream_config: {0}")]
    StreamConfig(#[from] StreamConfigError),
    #[error("events.schema_repositories: {0}")]
    Schemas(#[from] SchemaRepositoryError),
    #[error("events.stream_config: {0}")]
    MissingSchemas(#[from] MissingSchemas),
    #[error("events: {0}")]
    Setup(#[from] ValidatorSetupError),
    #[error("events.stream_config is not set")]
    Off,
}

/// What the rules are built from: `[events]` and the host name.
#[derive(Debug, Clone)]
pub struct EventRulesSource {
    events: EventsConfig,
    hostname: String,
}

impl EventRulesSource {
    /// `None` while the events intake is off.
    pub fn new(events: &EventsConfig, hostname: &str) -> Option<Self> {
        events.enabled().then(|| Self {
            events: events.clone(),
            hostname: hostname.to_string(),
        })
    }

    /// Reads, checks and compiles everything. Blocking: start-up or a
    /// blocking thread only.
    pub fn load(&self) -> Result<EventValidator, EventRulesError> {
        let events = &self.events;
        let path = events.stream_config.as_ref().ok_or(EventRulesError::Off)?;
        let streams = StreamConfig::load(path)?;
        let schemas = SchemaRepository::load(&events.schema_repositories)?;
        streams.check_schemas(&schemas)?;
        let settings = ValidatorSettings {
            topic_prefix: events.topic_prefix.clone(),
            unprefixed_stream_prefixes: events.unprefixed_streams.clone(),
            service_name: events.service_name.clone(),
            error_stream: events.error_stream(),
            emitter_id: format!("{}/{}", events.service_name, self.hostname),
            allow_absolute_schema_uris: events.allow_absolute_schema_uris,
            max_raw_event_bytes: MAX_RAW_EVENT_BYTES,
        };
        let validator = EventValidator::new(Arc::new(streams), Arc::new(schemas), settings)?;
        for skipped in validator.schema_repository().skipped() {
            tracing::warn!(skipped = %skipped, "schema file left out");
        }
        Ok(validator)
    }
}

/// How a reload ended, for `beacond_event_rules_reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    Ok,
    Failed,
}

impl LabelSet for ReloadResult {
    const NAME: &'static str = "result";
    const ALL: &'static [Self] = &[ReloadResult::Ok, ReloadResult::Failed];
    fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Failed => "failed",
        }
    }
}

/// Reload bookkeeping shared by start-up and `SIGHUP`.
#[derive(Debug, Clone)]
pub struct ReloadMetrics {
    pub results: CounterSet<ReloadResult>,
    /// Unix time the rules in force were loaded.
    pub loaded_at: Gauge,
}

impl ReloadMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let loaded_at = Gauge::default();
        metrics.register(
            "event_rules_loaded_timestamp_seconds",
            "Unix time the stream config and schemas in force were loaded",
            loaded_at.clone(),
        );
        Self {
            results: metrics.counter_set(
                "event_rules_reloads",
                "Reloads of the stream config and schemas (SIGHUP), by result",
            ),
            loaded_at,
        }
    }

    pub fn mark_loaded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.loaded_at.set(now as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_config() -> EventsConfig {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        EventsConfig {
            stream_config: Some(root.join("config/dev-streams.yaml")),
            schema_repositories: vec![
                root.join("tests/fixtures/event-schemas/primary/jsonschema"),
                root.join("tests/fixtures/event-schemas/secondary/jsonschema"),
            ],
            ..EventsConfig::default()
        }
    }

    #[test]
    fn the_dev_rules_load() {
        let source = EventRulesSource::new(&events_config(), "h.example").unwrap();
        let validator = source.load().unwrap();
        assert!(validator.schema_repository().len() >= 60);
        assert_eq!(validator.settings().emitter_id, "beacond/h.example");
        assert_eq!(
            validator.settings().error_stream,
            "beacond.error.validation"
        );
        crate::metrics::check_label_set::<ReloadResult>().unwrap();
    }

    #[test]
    fn errors_name_what_is_wrong() {
        assert!(EventRulesSource::new(&EventsConfig::default(), "h").is_none());
        let mut c = events_config();
        c.stream_config = Some("/nonexistent/streams.yaml".into());
        let msg = EventRulesSource::new(&c, "h")
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("events.stream_config") && msg.contains("/nonexistent"),
            "{msg}"
        );

        // A stream whose schema_title no schema has is named by its key.
        let dir = std::env::temp_dir().join(format!("beacond-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let streams = dir.join("streams.yaml");
        std::fs::write(
            &streams,
            "beacond.error.validation:\n  schema_title: error\nmy.stream:\n  schema_title: no/such/title\n",
        )
        .unwrap();
        let mut c = events_config();
        c.stream_config = Some(streams.clone());
        let msg = EventRulesSource::new(&c, "h")
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("my.stream") && msg.contains("no/such/title"),
            "{msg}"
        );

        // The error stream must be configured.
        std::fs::write(&streams, "test.event:\n  schema_title: test/event\n").unwrap();
        let msg = EventRulesSource::new(&c, "h")
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("beacond.error.validation"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
