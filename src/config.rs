//! Configuration: the TOML file, its defaults, and its validation.
//!
//! Owns the public interface of the service: every key, its default, and the
//! checks that turn a wrong key or value into an error naming that key. The
//! documented copy of every key is `config/beacond.toml`; keep them in step.
//!
//! Must never: be read on the request path (other modules take what they need
//! at start-up), or accept a key it does not know.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::HeaderName;
use ipnet::IpNet;
use regex::bytes::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

use crate::format::{OutputFormat, OutputFormats};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: String,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub client_ip: ClientIpConfig,
    pub output: OutputConfig,
    pub kafka: KafkaConfig,
    pub spool: SpoolConfig,
    pub shutdown: ShutdownConfig,
    pub rate_limit: RateLimitConfig,
    pub filter: FilterConfig,
    pub privacy: PrivacyConfig,
    pub events: EventsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Threads that serve requests (the async runtime's workers): 0 is one
    /// per CPU the process may run on (its affinity mask, cgroup quota
    /// included); 1 is a single-threaded runtime, with no work stealing.
    pub workers: usize,
    pub routes: Vec<String>,
    pub max_query_bytes: usize,
    pub max_user_agent_bytes: usize,
    pub max_body_bytes: usize,
    pub header_read_timeout_ms: u64,
    /// How long a response write may make no progress (the client reading
    /// nothing) before the connection is closed.
    pub write_timeout_ms: u64,
    /// The kernel's send buffer of each beacon connection (`SO_SNDBUF`):
    /// bounds the responses answered but not yet read by the client.
    pub send_buffer_bytes: usize,
    /// Open beacon connections at most; beyond, new ones are closed at once.
    pub max_connections: usize,
    /// Header lines per request at most; more gets 431.
    pub max_headers: usize,
    /// Expect a PROXY protocol (v1 or v2) header from trusted proxies.
    pub proxy_protocol: bool,
    /// TLS on the beacon listener (`[http.tls]`); unset: plain HTTP/1.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// HTTP/2's limits (`[http.h2]`), for connections that chose `h2` by ALPN.
    pub h2: H2Config,
}

/// `[http.tls]`: the certificate the beacon listener presents. Both files
/// are read at start-up and again on `SIGHUP`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[http.h2]`: the limits of an HTTP/2 connection (TLS with ALPN `h2`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct H2Config {
    /// Streams open at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a client that opens more gets them refused.
    pub max_concurrent_streams: u32,
    /// Streams a client may reset before the server accepted them, at once;
    /// beyond, the connection is closed with ENHANCE_YOUR_CALM (the rapid
    /// reset attack, CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for a client's protocol errors before it
    /// closes the connection (floods of bad frames).
    pub max_local_error_reset_streams: usize,
    /// Bytes of headers per request at most (SETTINGS_MAX_HEADER_LIST_SIZE);
    /// `0`: `http.max_query_bytes` + 16 KiB, as for HTTP/1.1.
    pub max_header_list_bytes: u32,
}

impl Default for H2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 256,
            max_header_list_bytes: 0,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            workers: 0,
            routes: vec!["/beacon/event".into(), "/event.gif".into()],
            max_query_bytes: 8192,
            max_user_agent_bytes: 2048,
            max_body_bytes: 65536,
            header_read_timeout_ms: 30_000,
            write_timeout_ms: 10_000,
            send_buffer_bytes: 65_536,
            max_connections: 10_000,
            max_headers: 100,
            proxy_protocol: false,
            tls: None,
            h2: H2Config::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConfig {
    pub trusted_proxies: Vec<IpNet>,
    pub header: String,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            header: "x-forwarded-for".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// One format or a list; `event_platform` needs the events intake.
    pub format: OutputFormats,
    /// `None` until resolved: the machine's FQDN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Refuse (400, `attested_field`) a capsule that sets a top-level field
    /// beacond attests (`recvFrom`, `seqId`, `dt`, `ip`, `userAgent`,
    /// `uuid`). Off: counted; beacond's value wins in `json` and
    /// `event_platform`, and the varnishkafka line carries the capsule as
    /// sent (the processor lets capsule fields win).
    pub refuse_attested_fields: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// No key: librdkafka spreads messages over partitions, like varnishkafka.
    #[default]
    Random,
    /// Keyed by the client IP's text: one client's beacons share a partition.
    ClientIp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_topic: Option<String>,
    pub partitioning: Partitioning,
    /// Passed to librdkafka as is, over [`DEFAULT_PRODUCER_PROPERTIES`].
    pub properties: BTreeMap<String, PropertyValue>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            topic: "eventlogging-client-side".into(),
            error_topic: None,
            partitioning: Partitioning::Random,
            properties: BTreeMap::new(),
        }
    }
}

/// A librdkafka property value: TOML strings, integers and booleans are all
/// accepted and passed on as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Integer(i64),
    Bool(bool),
}

impl std::fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropertyValue::Text(s) => f.write_str(s),
            PropertyValue::Integer(n) => write!(f, "{n}"),
            PropertyValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Producer settings beacond uses unless `[kafka.properties]` says otherwise.
/// snappy as varnishkafka; librdkafka's own defaults for the rest (acks=all,
/// idempotence off, queue of 100000 messages), with the queue's memory
/// capped well below librdkafka's 1 GiB default, and librdkafka's statistics
/// every 10 s (off in librdkafka; exported as `beacond_kafka_broker_*` and
/// `beacond_kafka_topic_*` by `kafka_stats`; `0` turns them off).
pub const DEFAULT_PRODUCER_PROPERTIES: &[(&str, &str)] = &[
    ("compression.codec", "snappy"),
    ("queue.buffering.max.kbytes", "131072"),
    ("statistics.interval.ms", "10000"),
];

/// Properties that beacond sets from other keys; setting them in
/// `[kafka.properties]` would be ambiguous.
const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
];

/// librdkafka properties whose values are secrets (passwords, private keys,
/// OAuth client secrets): `--check` prints them as [`REDACTED`].
pub const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
];

/// What `--check` prints instead of a secret property's value.
pub const REDACTED: &str = "<redacted>";

/// librdkafka's own default for `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub drain_seconds: u64,
    pub flush_timeout_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_seconds: 5,
            flush_timeout_seconds: 30,
        }
    }
}

/// When lines go to the spool (`spool.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolMode {
    /// Straight to the producer; to the spool when the producer cannot take a
    /// line or its delivery fails, and while the spool is not empty.
    #[default]
    Overflow,
    /// Every accepted line is written to the spool before 204 (write-ahead).
    Always,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub enabled: bool,
    pub dir: std::path::PathBuf,
    pub mode: SpoolMode,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync_interval_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "/var/lib/beacond/spool".into(),
            mode: SpoolMode::Overflow,
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            fsync_interval_ms: 100,
        }
    }
}

/// The Event Platform intake (`POST /v1/events`), EventGate's HTTP contract.
/// Off while neither `stream_config` nor `stream_config_uri` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub routes: Vec<String>,
    /// The stream config file (YAML or JSON); unset: the events intake is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_config: Option<PathBuf>,
    /// The stream config from a URL (MediaWiki's `action=streamconfigs`);
    /// an alternative to `stream_config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_config_uri: Option<String>,
    /// Request headers for `stream_config_uri` (e.g. `Host`).
    pub stream_config_headers: BTreeMap<String, String>,
    /// How often `stream_config_uri` is fetched again.
    pub stream_config_ttl_seconds: u64,
    /// Where the last good config from `stream_config_uri` is kept, for a
    /// start while the URL does not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_config_cache: Option<PathBuf>,
    /// Schema repository directories, tried in order.
    pub schema_repositories: Vec<PathBuf>,
    pub service_name: String,
    /// Unset: `<service_name>.error.validation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_stream: Option<String>,
    pub topic_prefix: String,
    /// Streams starting with one of these get no `topic_prefix` (EventGate's rule).
    pub unprefixed_streams: Vec<String>,
    pub max_body_bytes: usize,
    /// Bytes of request bodies held at once (read, parsed, being validated);
    /// beyond, requests get 503.
    pub max_buffered_bytes: usize,
    pub max_events_per_request: usize,
    /// Origins answered with CORS headers; `"*"` for any; empty: none.
    pub cors_allowed_origins: Vec<String>,
    pub allow_absolute_schema_uris: bool,
    /// Legacy schema name -> version of its `/analytics/legacy/<name>/`
    /// schema, for `output.format = "event_platform"`; a name not here gets
    /// the highest version in the schema repositories.
    pub legacy_schema_versions: BTreeMap<String, String>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            routes: vec!["/v1/events".into()],
            stream_config: None,
            stream_config_uri: None,
            stream_config_headers: BTreeMap::new(),
            stream_config_ttl_seconds: 60,
            stream_config_cache: None,
            schema_repositories: Vec::new(),
            service_name: "beacond".into(),
            error_stream: None,
            topic_prefix: String::new(),
            unprefixed_streams: vec!["eventlogging_".into()],
            max_body_bytes: 262_144,
            max_buffered_bytes: 64 << 20,
            max_events_per_request: 1000,
            cors_allowed_origins: Vec::new(),
            allow_absolute_schema_uris: false,
            legacy_schema_versions: BTreeMap::new(),
        }
    }
}

impl EventsConfig {
    /// True when `stream_config` or `stream_config_uri` is set.
    pub fn enabled(&self) -> bool {
        self.stream_config.is_some() || self.stream_config_uri.is_some()
    }

    /// True when the error stream's topic gets no `topic_prefix`.
    pub fn error_stream_unprefixed(&self) -> bool {
        let stream = self.error_stream();
        self.unprefixed_streams
            .iter()
            .any(|p| stream.starts_with(p.as_str()))
    }

    /// The error stream's name in force.
    pub fn error_stream(&self) -> String {
        self.error_stream
            .clone()
            .unwrap_or_else(|| format!("{}.error.validation", self.service_name))
    }
}

/// What a client over a rate limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RateLimitExceeded {
    /// 429 Too Many Requests with `Retry-After`.
    #[default]
    #[serde(rename = "429")]
    TooManyRequests,
    /// 204, the beacon silently dropped (the client does not retry).
    #[serde(rename = "204")]
    SilentDrop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Beacons per second for the whole process; 0: no global limit.
    pub global_per_second: u32,
    /// Beacons per second per client (IPv4 address, IPv6 /64); 0: no limit.
    pub per_client_per_second: u32,
    /// Beacons a client may send at once; 0: `per_client_per_second`.
    pub per_client_burst: u32,
    /// Clients (CIDRs) never limited.
    pub exempt: Vec<IpNet>,
    pub exceeded: RateLimitExceeded,
    /// Clients the per-client limiter holds at most.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            global_per_second: 0,
            per_client_per_second: 0,
            per_client_burst: 0,
            exempt: Vec::new(),
            exceeded: RateLimitExceeded::TooManyRequests,
            max_keys: 100_000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Regexes; a beacon whose user agent matches one is dropped (204).
    pub user_agent_exclude: Vec<String>,
}

/// The largest compiled form of the exclusion regexes, in bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl FilterConfig {
    /// Compiles `user_agent_exclude`; the error names the first bad regex.
    pub fn compile_user_agent_exclude(&self) -> Result<Option<RegexSet>, String> {
        let patterns = &self.user_agent_exclude;
        if patterns.is_empty() {
            return Ok(None);
        }
        for p in patterns {
            RegexSetBuilder::new([p])
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("{p:?}: {e}"))?;
        }
        RegexSetBuilder::new(patterns)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Write only the /24 (IPv4) or /48 (IPv6) of the client address.
    pub anonymize_ip: bool,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&text, &shown)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            let location = inner
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError::Parse {
                path: origin.to_string(),
                message: if key.is_empty() || key == "." {
                    format!("{message}{location}")
                } else {
                    format!("`{key}`: {message}{location}")
                },
            }
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| invalid(origin, key, message);
        let spool = &self.spool;
        if spool.enabled {
            if spool.dir.as_os_str().is_empty() {
                return Err(invalid(
                    "spool.dir",
                    "must name a directory (or set spool.enabled = false)".into(),
                ));
            }
            if !(4096..=1 << 30).contains(&spool.segment_bytes) {
                return Err(invalid(
                    "spool.segment_bytes",
                    "must be between 4096 and 1073741824".into(),
                ));
            }
            if spool.max_bytes < 2 * spool.segment_bytes {
                return Err(invalid(
                    "spool.max_bytes",
                    "must be at least twice spool.segment_bytes".into(),
                ));
            }
        }
        let http = &self.http;
        if let Some(tls) = &http.tls {
            if tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty() {
                return Err(invalid(
                    "http.tls",
                    "needs both `cert` and `key` (PEM files)".into(),
                ));
            }
        }
        let h2 = &http.h2;
        if h2.max_concurrent_streams == 0 {
            return Err(invalid(
                "http.h2.max_concurrent_streams",
                "must be above 0".into(),
            ));
        }
        if h2.max_pending_accept_reset_streams == 0 {
            return Err(invalid(
                "http.h2.max_pending_accept_reset_streams",
                "must be above 0".into(),
            ));
        }
        if h2.max_header_list_bytes != 0 && h2.max_header_list_bytes < 1024 {
            return Err(invalid(
                "http.h2.max_header_list_bytes",
                "must be 0 (as for HTTP/1.1) or at least 1024".into(),
            ));
        }
        if http.routes.is_empty() {
            return Err(invalid(
                "http.routes",
                "at least one route is needed".into(),
            ));
        }
        for route in &http.routes {
            check_route(route).map_err(|m| invalid("http.routes", m))?;
        }
        if !(16..=1 << 20).contains(&http.max_query_bytes) {
            return Err(invalid(
                "http.max_query_bytes",
                "must be between 16 and 1048576".into(),
            ));
        }
        if !(16..=1 << 16).contains(&http.max_user_agent_bytes) {
            return Err(invalid(
                "http.max_user_agent_bytes",
                "must be between 16 and 65536".into(),
            ));
        }
        if http.max_body_bytes > 1 << 24 {
            return Err(invalid(
                "http.max_body_bytes",
                "must be at most 16777216".into(),
            ));
        }
        if http.header_read_timeout_ms == 0 {
            return Err(invalid(
                "http.header_read_timeout_ms",
                "must be above 0".into(),
            ));
        }
        if !(1..=3_600_000).contains(&http.write_timeout_ms) {
            return Err(invalid(
                "http.write_timeout_ms",
                "must be between 1 and 3600000".into(),
            ));
        }
        if !(4096..=1 << 26).contains(&http.send_buffer_bytes) {
            return Err(invalid(
                "http.send_buffer_bytes",
                "must be between 4096 and 67108864".into(),
            ));
        }
        if http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be above 0".into()));
        }
        if !(1..=1024).contains(&http.max_headers) {
            return Err(invalid(
                "http.max_headers",
                "must be between 1 and 1024".into(),
            ));
        }
        if http.proxy_protocol && self.client_ip.trusted_proxies.is_empty() {
            return Err(invalid(
                "http.proxy_protocol",
                "needs client_ip.trusted_proxies: the load balancers allowed to send the header"
                    .into(),
            ));
        }
        if self.rate_limit.max_keys == 0 {
            return Err(invalid("rate_limit.max_keys", "must be above 0".into()));
        }
        self.filter
            .compile_user_agent_exclude()
            .map_err(|m| invalid("filter.user_agent_exclude", m))?;
        if http.listen == self.admin.listen && http.listen.port() != 0 {
            return Err(invalid(
                "admin.listen",
                "must differ from http.listen".into(),
            ));
        }
        if HeaderName::from_bytes(self.client_ip.header.as_bytes()).is_err() {
            return Err(invalid(
                "client_ip.header",
                format!("{:?} is not a header name", self.client_ip.header),
            ));
        }
        if let Some(host) = &self.output.hostname {
            if host.is_empty()
                || host
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(invalid(
                    "output.hostname",
                    "must be non-empty, without spaces or control characters".into(),
                ));
            }
        }
        self.validate_events(origin)?;
        self.validate_output(origin)?;
        let kafka = &self.kafka;
        if kafka.brokers.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers",
                "must name at least one broker".into(),
            ));
        }
        check_topic_name(&kafka.topic).map_err(|m| invalid("kafka.topic", m))?;
        if let Some(topic) = &kafka.error_topic {
            check_topic_name(topic).map_err(|m| invalid("kafka.error_topic", m))?;
            if *topic == kafka.topic {
                return Err(invalid(
                    "kafka.error_topic",
                    "must differ from kafka.topic".into(),
                ));
            }
        }
        for (name, instead) in RESERVED_PROPERTIES {
            if kafka.properties.contains_key(*name) {
                return Err(invalid(
                    "kafka.properties",
                    format!("set `{instead}` instead of `{name}`"),
                ));
            }
        }
        if let Some(v) = kafka.properties.get("message.max.bytes") {
            if v.to_string().parse::<usize>().is_err() {
                return Err(invalid(
                    "kafka.properties",
                    "`message.max.bytes` must be an integer".into(),
                ));
            }
        }
        Ok(())
    }

    /// `output.format`: a known, non-empty list, one line format at most,
    /// and `event_platform` only with the events intake on.
    fn validate_output(&self, origin: &str) -> Result<(), ConfigError> {
        let formats = self.output.format.as_slice();
        if formats.is_empty() {
            return Err(invalid(
                origin,
                "output.format",
                "name at least one format".into(),
            ));
        }
        for (i, f) in formats.iter().enumerate() {
            if formats[..i].contains(f) {
                return Err(invalid(
                    origin,
                    "output.format",
                    format!("{f:?} is named twice"),
                ));
            }
        }
        let lines = formats
            .iter()
            .filter(|f| **f != OutputFormat::EventPlatform)
            .count();
        if lines > 1 {
            return Err(invalid(
                origin,
                "output.format",
                "\"varnishkafka\" and \"json\" both write to kafka.topic: name one".into(),
            ));
        }
        if self.output.format.event_platform() && !self.events.enabled() {
            return Err(invalid(
                origin,
                "events.stream_config",
                "output.format \"event_platform\" needs the events intake: set events.stream_config"
                    .into(),
            ));
        }
        for (name, version) in &self.events.legacy_schema_versions {
            let semver = version.split('.').count() == 3
                && version
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if name.is_empty() || !semver {
                return Err(invalid(
                    origin,
                    "events.legacy_schema_versions",
                    format!(
                        "{name:?} = {version:?}: want a schema name and a version like \"1.0.0\""
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `output.hostname`, or the machine's FQDN when unset.
    fn validate_events(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| invalid(origin, key, message);
        let events = &self.events;
        for route in &events.routes {
            check_route(route).map_err(|m| invalid("events.routes", m))?;
            if events.enabled() && self.http.routes.contains(route) {
                return Err(invalid(
                    "events.routes",
                    format!("{route:?} is also in http.routes"),
                ));
            }
        }
        if events.stream_config.is_some() && events.stream_config_uri.is_some() {
            return Err(invalid(
                "events.stream_config_uri",
                "events.stream_config and events.stream_config_uri are alternatives: set one"
                    .into(),
            ));
        }
        if let Some(uri) = &events.stream_config_uri {
            let parsed: Result<http::Uri, _> = uri.parse();
            match parsed {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => {
                    return Err(invalid(
                        "events.stream_config_uri",
                        format!("{uri:?} is not an http:// or https:// URL"),
                    ))
                }
            }
            for (name, value) in &events.stream_config_headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || http::HeaderValue::from_str(value).is_err()
                {
                    return Err(invalid(
                        "events.stream_config_headers",
                        format!("{name:?} is not a valid header name and value"),
                    ));
                }
            }
            if !(1..=86_400).contains(&events.stream_config_ttl_seconds) {
                return Err(invalid(
                    "events.stream_config_ttl_seconds",
                    "must be between 1 and 86400".into(),
                ));
            }
        }
        if !events.enabled() {
            return Ok(());
        }
        if events.routes.is_empty() {
            return Err(invalid(
                "events.routes",
                "at least one route is needed (or unset events.stream_config and events.stream_config_uri)".into(),
            ));
        }
        if events.schema_repositories.is_empty() {
            return Err(invalid(
                "events.schema_repositories",
                "name at least one schema repository directory".into(),
            ));
        }
        if events.service_name.is_empty()
            || events
                .service_name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(invalid(
                "events.service_name",
                "must be non-empty, without spaces or control characters".into(),
            ));
        }
        let error_topic = if events.error_stream_unprefixed() {
            events.error_stream()
        } else {
            format!("{}{}", events.topic_prefix, events.error_stream())
        };
        if !events.topic_prefix.is_empty() {
            check_topic_name(&events.topic_prefix)
                .map_err(|m| invalid("events.topic_prefix", m))?;
        }
        check_topic_name(&error_topic).map_err(|m| invalid("events.error_stream", m))?;
        if !(2..=1 << 24).contains(&events.max_body_bytes) {
            return Err(invalid(
                "events.max_body_bytes",
                "must be between 2 and 16777216".into(),
            ));
        }
        if events.max_buffered_bytes < events.max_body_bytes
            || events.max_buffered_bytes > u32::MAX as usize
        {
            return Err(invalid(
                "events.max_buffered_bytes",
                "must be at least events.max_body_bytes and below 4 GiB".into(),
            ));
        }
        if !(1..=100_000).contains(&events.max_events_per_request) {
            return Err(invalid(
                "events.max_events_per_request",
                "must be between 1 and 100000".into(),
            ));
        }
        for origin in &events.cors_allowed_origins {
            if origin != "*" && http::HeaderValue::from_str(origin).is_err() {
                return Err(invalid(
                    "events.cors_allowed_origins",
                    format!("{origin:?} is not a valid origin"),
                ));
            }
        }
        Ok(())
    }

    /// `lookup` finds the machine's name (`meta::machine_fqdn`).
    pub fn resolve_hostname(&mut self, lookup: impl FnOnce() -> String) -> &str {
        self.output.hostname.get_or_insert_with(lookup)
    }

    /// The producer properties in force: defaults, overridden by the file.
    pub fn producer_properties(&self) -> BTreeMap<String, String> {
        let mut props: BTreeMap<String, String> = DEFAULT_PRODUCER_PROPERTIES
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in &self.kafka.properties {
            props.insert(k.clone(), v.to_string());
        }
        props.insert("bootstrap.servers".into(), self.kafka.brokers.clone());
        props
    }

    /// The producer's `message.max.bytes` in force.
    pub fn message_max_bytes(&self) -> usize {
        self.kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.to_string().parse().ok())
            .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES)
    }

    /// Checks that the largest message an accepted (or rejected) beacon can
    /// produce fits the producer's `message.max.bytes`, so no beacon answered
    /// 204 is refused by the producer for its size. Needs the hostname resolved.
    pub fn check_message_size(&self) -> Result<(), ConfigError> {
        let hostname_len = self.output.hostname.as_deref().map_or(255, str::len);
        let largest = self
            .output
            .format
            .as_slice()
            .iter()
            .map(|f| {
                f.max_message_bytes(
                    self.http.max_query_bytes,
                    self.http.max_user_agent_bytes,
                    hostname_len,
                )
            })
            .max()
            .unwrap_or(0)
            + crate::format::MAX_KEY_BYTES;
        let limit = self.message_max_bytes();
        if largest > limit {
            return Err(ConfigError::Invalid {
                path: "config".into(),
                key: "http.max_query_bytes",
                message: format!(
                    "with http.max_user_agent_bytes = {} a message can reach {largest} bytes, \
                     above the producer's message.max.bytes = {limit}: lower the limits or raise \
                     message.max.bytes in [kafka.properties]",
                    self.http.max_user_agent_bytes
                ),
            });
        }
        Ok(())
    }

    /// The effective config as TOML, for `--check`; secret properties
    /// ([`SECRET_PROPERTIES`]) are shown as [`REDACTED`].
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for (k, v) in self.producer_properties() {
            if k == "bootstrap.servers" {
                continue;
            }
            let v = if SECRET_PROPERTIES.contains(&k.as_str()) {
                REDACTED.to_string()
            } else {
                v
            };
            shown.kafka.properties.insert(k, PropertyValue::Text(v));
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn invalid(origin: &str, key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: origin.to_string(),
        key,
        message,
    }
}

fn check_route(route: &str) -> Result<(), String> {
    if route.starts_with('/') && !route.contains('?') {
        Ok(())
    } else {
        Err(format!("{route:?} must be a path starting with `/`"))
    }
}

fn check_topic_name(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{topic:?} is not a valid Kafka topic name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.http.routes, vec!["/beacon/event", "/event.gif"]);
        assert_eq!(c.kafka.topic, "eventlogging-client-side");
        assert_eq!(c.output.format, OutputFormat::Varnishkafka.into());
        assert_eq!(c.producer_properties()["compression.codec"], "snappy");
    }

    #[test]
    fn documented_example_parses() {
        let text = include_str!("../config/beacond.toml");
        let mut c = Config::parse(text, "config/beacond.toml").unwrap();
        // The example documents the defaults: it must mean exactly them.
        let d = Config::default();
        assert_eq!(c.producer_properties(), d.producer_properties());
        c.kafka.properties.clear();
        assert_eq!(toml::to_string(&c).unwrap(), toml::to_string(&d).unwrap());
    }

    #[test]
    fn stream_config_file_and_uri_are_alternatives() {
        let base = "[events]\nschema_repositories = [\"/s\"]\n";
        let both = format!(
            "{base}stream_config = \"/s.yaml\"\nstream_config_uri = \"http://mw/api.php\"\n"
        );
        let msg = Config::parse(&both, "f").unwrap_err().to_string();
        assert!(msg.contains("events.stream_config_uri"), "{msg}");
        let c = Config::parse(
            &format!("{base}stream_config_uri = \"https://mw/api.php?a=b\"\n[events.stream_config_headers]\nHost = \"meta.wikimedia.org\"\n"),
            "f",
        )
        .unwrap();
        assert!(c.events.enabled());
        assert_eq!(c.events.stream_config_ttl_seconds, 60);
        assert_eq!(c.events.stream_config_headers["Host"], "meta.wikimedia.org");
        for (bad, key) in [
            (
                "stream_config_uri = \"ftp://x/\"\n",
                "events.stream_config_uri",
            ),
            (
                "stream_config_uri = \"http://x/\"\nstream_config_ttl_seconds = 0\n",
                "events.stream_config_ttl_seconds",
            ),
            (
                "stream_config_uri = \"http://x/\"\nstream_config_headers = {\"a b\" = \"c\"}\n",
                "events.stream_config_headers",
            ),
        ] {
            let msg = Config::parse(&format!("{base}{bad}"), "f")
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{bad}: {msg}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            Config::parse("[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", "f.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("lisen"), "{msg}");
        assert!(msg.contains("f.toml"), "{msg}");
    }

    #[test]
    fn bad_value_is_named() {
        let msg = Config::parse("[http]\nmax_query_bytes = \"big\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("http.max_query_bytes"), "{msg}");
        let msg = Config::parse("[output]\nformat = \"xml\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("output.format"), "{msg}");
        let msg = Config::parse("[client_ip]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("client_ip.trusted_proxies"), "{msg}");
        let msg = Config::parse("[kafka]\ntopic = \"a b\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("kafka.topic"), "{msg}");
        let msg = Config::parse("[kafka.properties]\n\"bootstrap.servers\" = \"x\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("kafka.brokers"), "{msg}");
        let msg = Config::parse("[http]\nroutes = [\"beacon\"]\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("http.routes"), "{msg}");
    }

    #[test]
    fn property_values_are_text() {
        let c = Config::parse(
            "[kafka.properties]\n\"linger.ms\" = 20\n\"enable.idempotence\" = true\n\"acks\" = \"1\"\n",
            "f",
        )
        .unwrap();
        let p = c.producer_properties();
        assert_eq!(p["linger.ms"], "20");
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "1");
    }

    #[test]
    fn message_size_must_fit() {
        let mut c = Config::parse("[output]\nhostname = \"h\"\n", "f").unwrap();
        assert!(c.check_message_size().is_ok());
        c.kafka
            .properties
            .insert("message.max.bytes".into(), PropertyValue::Integer(10_000));
        let msg = c.check_message_size().unwrap_err().to_string();
        assert!(msg.contains("message.max.bytes"), "{msg}");
    }

    #[test]
    fn edge_keys_parse_and_are_validated() {
        let c = Config::parse(
            "[rate_limit]\nper_client_per_second = 10\nexceeded = \"204\"\nexempt = [\"10.0.0.0/8\"]\n\
             [filter]\nuser_agent_exclude = [\"^Fuzz Faster U Fool\"]\n\
             [privacy]\nanonymize_ip = true\n\
             [client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [http]\nproxy_protocol = true\nmax_headers = 50\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.rate_limit.exceeded, RateLimitExceeded::SilentDrop);
        assert_eq!(c.rate_limit.per_client_per_second, 10);
        assert!(c.privacy.anonymize_ip && c.http.proxy_protocol);
        let msg = Config::parse("[filter]\nuser_agent_exclude = [\"(unclosed\"]\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("filter.user_agent_exclude"), "{msg}");
        let msg = Config::parse("[http]\nproxy_protocol = true\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("client_ip.trusted_proxies"), "{msg}");
        let msg = Config::parse("[rate_limit]\nexceeded = \"503\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("rate_limit.exceeded"), "{msg}");
        for (text, key) in [
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[http]\nwrite_timeout_ms = 0\n", "http.write_timeout_ms"),
            (
                "[http]\nsend_buffer_bytes = 100\n",
                "http.send_buffer_bytes",
            ),
            ("[http]\nmax_headers = 0\n", "http.max_headers"),
            ("[rate_limit]\nmax_keys = 0\n", "rate_limit.max_keys"),
        ] {
            let msg = Config::parse(text, "f").unwrap_err().to_string();
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn events_keys_are_validated() {
        let c = Config::parse("", "f").unwrap();
        assert!(!c.events.enabled());
        assert_eq!(c.events.error_stream(), "beacond.error.validation");
        let on = "[events]\nstream_config = \"s.yaml\"\nschema_repositories = [\"d\"]\n";
        let c = Config::parse(&format!("{on}service_name = \"eg\"\n"), "f").unwrap();
        assert!(c.events.enabled());
        assert_eq!(c.events.error_stream(), "eg.error.validation");
        for (extra, key) in [
            ("routes = [\"v1/events\"]\n", "events.routes"),
            ("routes = [\"/beacon/event\"]\n", "events.routes"),
            ("routes = []\n", "events.routes"),
            ("service_name = \"a b\"\n", "events.service_name"),
            ("error_stream = \"bad stream\"\n", "events.error_stream"),
            ("topic_prefix = \"eq iad.\"\n", "events.topic_prefix"),
            ("max_body_bytes = 1\n", "events.max_body_bytes"),
            (
                "max_events_per_request = 0\n",
                "events.max_events_per_request",
            ),
            ("max_buffered_bytes = 1024\n", "events.max_buffered_bytes"),
            (
                "cors_allowed_origins = [\"bad\\norigin\"]\n",
                "events.cors_allowed_origins",
            ),
            ("schema_repositories = []\n", "events.schema_repositories"),
            ("lisen = 1\n", "lisen"),
        ] {
            let text = format!("{on}{extra}").replace(
                "schema_repositories = [\"d\"]\nschema_repositories = []",
                "schema_repositories = []",
            );
            let msg = Config::parse(&text, "f").unwrap_err().to_string();
            assert!(msg.contains(key), "{extra}: {msg}");
        }
        // Without stream_config the intake is off: its other keys need not be set.
        assert!(Config::parse("[events]\nroutes = [\"/beacon/event\"]\n", "f").is_ok());
    }

    #[test]
    fn output_format_takes_a_string_or_a_list() {
        let on = "[events]\nstream_config = \"s.yaml\"\nschema_repositories = [\"d\"]\n";
        let c = Config::parse("[output]\nformat = \"json\"\n", "f").unwrap();
        assert_eq!(c.output.format.line(), Some(OutputFormat::Json));
        assert!(!c.output.format.event_platform());
        let both = format!(
            "[output]\nformat = [\"varnishkafka\", \"event_platform\"]\n{on}\
             [events.legacy_schema_versions]\nMediaWikiPingback = \"1.0.0\"\n"
        );
        let c = Config::parse(&both, "f").unwrap();
        assert_eq!(c.output.format.line(), Some(OutputFormat::Varnishkafka));
        assert!(c.output.format.event_platform());
        assert_eq!(
            c.events.legacy_schema_versions["MediaWikiPingback"],
            "1.0.0"
        );
        // Shown back as a list, parsed back the same.
        let again = Config::parse(&c.to_toml(), "shown").unwrap();
        assert_eq!(again.output.format, c.output.format);
        let c = Config::parse(
            &format!("[output]\nformat = [\"event_platform\"]\n{on}"),
            "f",
        )
        .unwrap();
        assert_eq!(c.output.format.line(), None);
        for (text, key) in [
            (
                "[output]\nformat = [\"event_platform\"]\n".to_string(),
                "events.stream_config",
            ),
            ("[output]\nformat = []\n".to_string(), "output.format"),
            (
                "[output]\nformat = [\"json\", \"varnishkafka\"]\n".to_string(),
                "output.format",
            ),
            (
                "[output]\nformat = [\"json\", \"json\"]\n".to_string(),
                "output.format",
            ),
            (
                "[output]\nformat = [\"xml\"]\n".to_string(),
                "output.format",
            ),
            (
                format!("{on}[events.legacy_schema_versions]\nX = \"latest\"\n"),
                "events.legacy_schema_versions",
            ),
        ] {
            let msg = Config::parse(&text, "f").unwrap_err().to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn check_output_round_trips() {
        let mut c = Config::parse("[kafka]\nerror_topic = \"errs\"\n", "f").unwrap();
        c.resolve_hostname(|| "h.example".into());
        let shown = c.to_toml();
        let again = Config::parse(&shown, "shown").unwrap();
        assert_eq!(again.kafka.error_topic.as_deref(), Some("errs"));
        assert!(again.output.hostname.is_some());
        assert_eq!(
            again.kafka.properties["compression.codec"],
            PropertyValue::Text("snappy".into())
        );
    }

    #[test]
    fn check_output_redacts_secret_properties() {
        let c = Config::parse(
            "[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\
             \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"beacond\"\n\
             \"sasl.password\" = \"hunter2-sasl\"\n\"ssl.key.password\" = \"hunter2-key\"\n",
            "f",
        )
        .unwrap();
        let shown = c.to_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("\"sasl.password\" = \"<redacted>\""),
            "{shown}"
        );
        assert!(
            shown.contains("\"ssl.key.password\" = \"<redacted>\""),
            "{shown}"
        );
        assert!(shown.contains("\"sasl.username\" = \"beacond\""), "{shown}");
        // The config in force keeps the real values.
        assert_eq!(c.producer_properties()["sasl.password"], "hunter2-sasl");
    }
}
