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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;

use crate::config::EventsConfig;
use crate::metrics::{CounterSet, LabelSet, Metrics};
use crate::schema_repository::{SchemaRepository, SchemaRepositoryError};
use crate::stream_config::{MissingSchemas, StreamConfig, StreamConfigError};
use crate::stream_config_remote::{
    self as remote, FetchError, LastGood, RefreshResult, RemoteSettings, StreamConfigStatus,
};
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
    /// Neither the URL nor the cache gave a usable stream config.
    #[error("events.stream_config_uri: no stream config: {uri}: {fetch}; {cache}")]
    NoRemoteConfig {
        uri: String,
        fetch: String,
        cache: String,
    },
}

impl EventRulesError {
    /// The refresh result a stream config that got this far counts as.
    fn refresh_result(&self) -> RefreshResult {
        match self {
            EventRulesError::StreamConfig(_) => RefreshResult::Unparsable,
            EventRulesError::MissingSchemas(_) => RefreshResult::UnknownSchema,
            _ => RefreshResult::Rejected,
        }
    }
}

/// Where the stream config comes from.
#[derive(Debug, Clone)]
enum StreamSource {
    File(PathBuf),
    Remote(Arc<Remote>),
}

/// `events.stream_config_uri`'s state: settings, the last good text, and
/// what `/readyz` and the metrics read.
#[derive(Debug)]
struct Remote {
    settings: RemoteSettings,
    last_good: LastGood,
    status: Arc<StreamConfigStatus>,
    metrics: std::sync::OnceLock<RefreshMetrics>,
    /// False for `--check`, which reads the cache but never writes it.
    write_cache: bool,
}

/// `beacond_event_stream_config_refreshes_total{result}` and
/// `beacond_event_stream_config_age_seconds`.
#[derive(Debug, Clone)]
struct RefreshMetrics {
    results: CounterSet<RefreshResult>,
    age: Gauge,
}

impl Remote {
    fn count(&self, result: RefreshResult) {
        if result != RefreshResult::Cache {
            self.status.set_last(result);
        }
        if let Some(m) = self.metrics.get() {
            m.results.inc(result);
        }
    }

    fn update_age(&self) {
        if let Some(m) = self.metrics.get() {
            m.age.set(self.status.age_seconds(remote::now_ms()) as i64);
        }
    }

    /// A text just fetched was put in force: remember it, cache it.
    fn in_force(&self, text: String, at_ms: u64) {
        self.status.set_in_force(at_ms, false);
        self.count(RefreshResult::Ok);
        if let Some(cache) = self.settings.cache.as_ref().filter(|_| self.write_cache) {
            if let Err(e) = remote::write_cache(cache, &text) {
                tracing::error!(error = %e, path = %cache.display(), "events.stream_config_cache: cannot write the stream config cache");
            }
        }
        self.last_good.set(text, at_ms);
        self.update_age();
    }

    /// A fetch failed: counted, logged with what happens next (`then`).
    fn failed(&self, result: RefreshResult, message: &str, then: &str) {
        self.count(result);
        self.update_age();
        tracing::warn!(
            uri = %self.settings.uri,
            result = result.as_str(),
            error = %message,
            "stream config fetch failed; {then}"
        );
    }
}

/// What the rules are built from: `[events]` and the host name.
#[derive(Debug, Clone)]
pub struct EventRulesSource {
    events: EventsConfig,
    hostname: String,
    streams: StreamSource,
}

impl EventRulesSource {
    /// `None` while the events intake is off.
    pub fn new(events: &EventsConfig, hostname: &str) -> Option<Self> {
        let streams = if let Some(settings) = RemoteSettings::from_config(events) {
            StreamSource::Remote(Arc::new(Remote {
                settings,
                last_good: LastGood::default(),
                status: Arc::new(StreamConfigStatus::default()),
                metrics: std::sync::OnceLock::new(),
                write_cache: true,
            }))
        } else {
            StreamSource::File(events.stream_config.clone()?)
        };
        Some(Self {
            events: events.clone(),
            hostname: hostname.to_string(),
            streams,
        })
    }

    /// For `--check`: a good answer from the URL is not written to the cache.
    pub fn checking(&self) -> Self {
        let mut this = self.clone();
        if let StreamSource::Remote(r) = &self.streams {
            this.streams = StreamSource::Remote(Arc::new(Remote {
                settings: r.settings.clone(),
                last_good: LastGood::default(),
                status: Arc::new(StreamConfigStatus::default()),
                metrics: std::sync::OnceLock::new(),
                write_cache: false,
            }));
        }
        this
    }

    /// Registers the stream config refresh metrics (a URL config only).
    pub fn register_metrics(&self, metrics: &Metrics) {
        if let StreamSource::Remote(r) = &self.streams {
            let age = Gauge::default();
            metrics.register(
                "event_stream_config_age_seconds",
                "Seconds since the stream config in force was fetched from events.stream_config_uri",
                age.clone(),
            );
            let _ = r.metrics.set(RefreshMetrics {
                results: metrics.counter_set(
                    "event_stream_config_refreshes",
                    "Fetches of events.stream_config_uri, by result (cache: start-up from the cache)",
                ),
                age,
            });
            r.update_age();
        }
    }

    /// What `/readyz` shows of a URL stream config; `None` for a file.
    pub fn remote_status(&self) -> Option<Arc<StreamConfigStatus>> {
        match &self.streams {
            StreamSource::Remote(r) => Some(r.status.clone()),
            StreamSource::File(_) => None,
        }
    }

    /// The refresh interval of a URL stream config; `None` for a file.
    pub fn refresh_interval(&self) -> Option<std::time::Duration> {
        match &self.streams {
            StreamSource::Remote(r) => Some(r.settings.ttl),
            StreamSource::File(_) => None,
        }
    }

    /// Sets the age gauge from the clock (the refresh thread, between fetches).
    pub fn update_age(&self) {
        if let StreamSource::Remote(r) = &self.streams {
            r.update_age();
        }
    }

    /// Reads, checks and compiles everything. Blocking: start-up or a
    /// blocking thread only. From a URL: the answer, else (a `SIGHUP`) the
    /// last good one in memory, else the cache; else an error.
    pub fn load(&self) -> Result<EventValidator, EventRulesError> {
        let schemas = Arc::new(SchemaRepository::load(&self.events.schema_repositories)?);
        match &self.streams {
            StreamSource::File(path) => {
                let streams = StreamConfig::load(path)?;
                self.build(streams, schemas)
            }
            StreamSource::Remote(r) => self.load_remote(r, schemas),
        }
    }

    /// Fetches the URL once and builds the rules with `schemas` (those in
    /// force). `None` when there is no URL. On failure nothing changes but
    /// the counters; the caller keeps its rules.
    pub fn refresh(
        &self,
        schemas: Arc<SchemaRepository>,
    ) -> Option<Result<EventValidator, FetchError>> {
        let StreamSource::Remote(r) = &self.streams else {
            return None;
        };
        Some(self.fetch_and_build(r, schemas).inspect_err(|e| {
            r.failed(
                e.reason,
                &e.message,
                "the last good stream config stays in force",
            );
        }))
    }

    fn fetch_and_build(
        &self,
        r: &Remote,
        schemas: Arc<SchemaRepository>,
    ) -> Result<EventValidator, FetchError> {
        let at = remote::now_ms();
        let text = remote::fetch(&r.settings)?;
        let validator = self
            .build_text(&text, &r.settings.uri, schemas)
            .map_err(|e| FetchError {
                reason: e.refresh_result(),
                message: e.to_string(),
            })?;
        r.in_force(text, at);
        Ok(validator)
    }

    fn load_remote(
        &self,
        r: &Remote,
        schemas: Arc<SchemaRepository>,
    ) -> Result<EventValidator, EventRulesError> {
        let fetch_error = match self.fetch_and_build(r, schemas.clone()) {
            Ok(v) => return Ok(v),
            Err(e) => {
                r.failed(
                    e.reason,
                    &e.message,
                    "trying the last good stream config, then events.stream_config_cache",
                );
                format!("{} ({})", e.message, e.reason.as_str())
            }
        };
        if let Some((text, _)) = r.last_good.get() {
            let v = self.build_text(&text, &r.settings.uri, schemas)?;
            tracing::warn!("the URL failed: the last good stream config fetched stays, with the schemas reloaded");
            return Ok(v);
        }
        let cache = match &r.settings.cache {
            None => "events.stream_config_cache is not set".to_string(),
            Some(path) => match remote::read_cache(path) {
                Err(e) => format!("events.stream_config_cache {}: {e}", path.display()),
                Ok((text, written_ms)) => {
                    match self.build_text(&text, &path.display().to_string(), schemas) {
                        Ok(v) => {
                            r.status.set_in_force(written_ms, true);
                            r.status.set_last(RefreshResult::Cache);
                            r.count(RefreshResult::Cache);
                            r.last_good.set(text, written_ms);
                            r.update_age();
                            tracing::warn!(
                                path = %path.display(),
                                age_seconds = r.status.age_seconds(remote::now_ms()),
                                "events.stream_config_uri failed: starting with the cached stream config"
                            );
                            return Ok(v);
                        }
                        Err(e) => format!("events.stream_config_cache {}: {e}", path.display()),
                    }
                }
            },
        };
        Err(EventRulesError::NoRemoteConfig {
            uri: r.settings.uri.clone(),
            fetch: fetch_error,
            cache,
        })
    }

    fn build_text(
        &self,
        text: &str,
        origin: &str,
        schemas: Arc<SchemaRepository>,
    ) -> Result<EventValidator, EventRulesError> {
        let streams = StreamConfig::parse_json(text, origin)?;
        if streams.is_empty() {
            // Never an empty config.
            return Err(StreamConfigError::Parse {
                origin: origin.to_owned(),
                message: "no streams".into(),
            }
            .into());
        }
        self.build(streams, schemas)
    }

    fn build(
        &self,
        streams: StreamConfig,
        schemas: Arc<SchemaRepository>,
    ) -> Result<EventValidator, EventRulesError> {
        let events = &self.events;
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
        let validator = EventValidator::new(Arc::new(streams), schemas, settings)?;
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

    /// A URL nothing answers on.
    fn dead_uri() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/w/api.php", l.local_addr().unwrap())
    }

    #[test]
    fn a_url_that_fails_falls_back_to_the_cache_or_names_both_keys() {
        let dir = std::env::temp_dir().join(format!("beacond-rules-uri-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("cache.json");
        let mut c = events_config();
        c.stream_config = None;
        c.stream_config_uri = Some(dead_uri());
        c.stream_config_cache = Some(cache.clone());

        // Neither: the error names the URL key, the URL and the cache key.
        let source = EventRulesSource::new(&c, "h").unwrap();
        let msg = source.load().unwrap_err().to_string();
        assert!(
            msg.contains("events.stream_config_uri")
                && msg.contains(c.stream_config_uri.as_deref().unwrap())
                && msg.contains("events.stream_config_cache")
                && msg.contains("unreachable"),
            "{msg}"
        );

        // A cache: it serves, and the status says so.
        remote::write_cache(
            &cache,
            r#"{"streams": {"beacond.error.validation": {"schema_title": "error"},
                "test.event": {"schema_title": "test/event"}}}"#,
        )
        .unwrap();
        let source = EventRulesSource::new(&c, "h").unwrap();
        let v = source.load().unwrap();
        assert_eq!(v.stream_config().len(), 2);
        let status = source.remote_status().unwrap();
        assert_eq!(status.last(), RefreshResult::Cache);
        assert!(status
            .detail_line(remote::now_ms())
            .contains("from the cache"));

        // A refresh that fails leaves nothing to put in force.
        let failed = source.refresh(v.schema_repository().clone()).unwrap();
        assert_eq!(failed.unwrap_err().reason, RefreshResult::Unreachable);
        assert_eq!(status.last(), RefreshResult::Unreachable);

        // A cache with no streams, or a title no schema has, is no config.
        for bad in [
            r#"{"streams": {}}"#,
            r#"{"streams": {"beacond.error.validation": {"schema_title": "error"},
                "x": {"schema_title": "no/such/title"}}}"#,
        ] {
            remote::write_cache(&cache, bad).unwrap();
            let msg = EventRulesSource::new(&c, "h")
                .unwrap()
                .load()
                .unwrap_err()
                .to_string();
            assert!(msg.contains("events.stream_config_cache"), "{msg}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refresh_results_by_error() {
        let e: EventRulesError = StreamConfigError::Parse {
            origin: "u".into(),
            message: "m".into(),
        }
        .into();
        assert_eq!(e.refresh_result(), RefreshResult::Unparsable);
        let e: EventRulesError = MissingSchemas { missing: vec![] }.into();
        assert_eq!(e.refresh_result(), RefreshResult::UnknownSchema);
        assert_eq!(
            EventRulesError::Off.refresh_result(),
            RefreshResult::Rejected
        );
        // A file source has no URL to refresh.
        let source = EventRulesSource::new(&events_config(), "h").unwrap();
        assert!(source.remote_status().is_none() && source.refresh_interval().is_none());
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
