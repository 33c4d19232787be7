//! The stream config from a URL (`events.stream_config_uri`): fetching,
//! the on-disk cache of the last good answer, and the bookkeeping that
//! `/readyz` and the metrics show (its age, how refreshes ended).
//!
//! The HTTP client is `ureq` 3: maintained, blocking (it runs on the refresh
//! thread or a start-up/`SIGHUP` blocking thread, never on the runtime), with
//! a global timeout per request, and rustls with webpki roots for https (no
//! OpenSSL). reqwest would pull in a second stack (its own tokio client,
//! hyper-util client features) for one GET a minute.
//!
//! Must never: run on the request path, or hand out an empty config (a failed
//! fetch is an error for the caller, who keeps what it has).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::EventsConfig;
use crate::metrics::LabelSet;

/// The largest answer read from the URL.
pub const MAX_ANSWER_BYTES: u64 = 16 << 20;
/// The longest a fetch may take (the TTL when shorter, but at least 1 s).
pub const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How one fetch or refresh of the stream config ended, for
/// `beacond_event_stream_config_refreshes_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefreshResult {
    /// Fetched, parsed, checked, in force (and cached).
    Ok,
    /// Start-up from `stream_config_cache` while the URL failed.
    Cache,
    /// Connection refused, DNS, TLS, reset: no answer.
    Unreachable,
    /// No complete answer within the timeout.
    Timeout,
    /// An answer, not 2xx.
    HttpStatus,
    /// A 2xx whose body is not a stream config (or too large).
    Unparsable,
    /// A stream names a schema title no schema repository has.
    UnknownSchema,
    /// Parsed but refused by the validator (e.g. no error stream).
    Rejected,
}

impl LabelSet for RefreshResult {
    const NAME: &'static str = "result";
    const ALL: &'static [Self] = &[
        RefreshResult::Ok,
        RefreshResult::Cache,
        RefreshResult::Unreachable,
        RefreshResult::Timeout,
        RefreshResult::HttpStatus,
        RefreshResult::Unparsable,
        RefreshResult::UnknownSchema,
        RefreshResult::Rejected,
    ];
    fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Ok => "ok",
            RefreshResult::Cache => "cache",
            RefreshResult::Unreachable => "unreachable",
            RefreshResult::Timeout => "timeout",
            RefreshResult::HttpStatus => "http_status",
            RefreshResult::Unparsable => "unparsable",
            RefreshResult::UnknownSchema => "unknown_schema",
            RefreshResult::Rejected => "rejected",
        }
    }
}

/// A fetch that gave no stream config text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub reason: RefreshResult,
    pub message: String,
}

/// `[events]`'s URL settings.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub ttl: Duration,
    pub timeout: Duration,
    pub cache: Option<PathBuf>,
}

impl RemoteSettings {
    /// `None` unless `stream_config_uri` is set.
    pub fn from_config(events: &EventsConfig) -> Option<Self> {
        let uri = events.stream_config_uri.clone()?;
        let ttl = Duration::from_secs(events.stream_config_ttl_seconds.max(1));
        Some(Self {
            uri,
            headers: events
                .stream_config_headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ttl,
            timeout: fetch_timeout(ttl),
            cache: events.stream_config_cache.clone(),
        })
    }
}

/// The timeout of one fetch: the TTL, between 1 s and [`MAX_FETCH_TIMEOUT`].
pub fn fetch_timeout(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_secs(1), MAX_FETCH_TIMEOUT)
}

/// One GET of the URL with the configured headers; the body as text.
/// Blocking.
pub fn fetch(settings: &RemoteSettings) -> Result<String, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(settings.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(&settings.uri);
    for (name, value) in &settings.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let mut response = request.call().map_err(classify)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError {
            reason: RefreshResult::HttpStatus,
            message: format!("answered {status}"),
        });
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|e| match classify(e) {
            FetchError {
                reason: RefreshResult::Unreachable,
                message,
            } => FetchError {
                reason: RefreshResult::Unparsable,
                message,
            },
            other => other,
        })
}

fn classify(e: ureq::Error) -> FetchError {
    let timeout = match &e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        _ => false,
    };
    FetchError {
        reason: if timeout {
            RefreshResult::Timeout
        } else {
            RefreshResult::Unreachable
        },
        message: e.to_string(),
    }
}

/// Replaces `path` with `text` atomically: a temporary file beside it,
/// fsynced, renamed over it, and the directory fsynced.
pub fn write_cache(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("stream-config"),
        |n| n.to_owned(),
    );
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The cached text and when it was written (Unix ms).
pub fn read_cache(path: &Path) -> std::io::Result<(String, u64)> {
    let text = std::fs::read_to_string(path)?;
    let written = std::fs::metadata(path)?
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as u64);
    Ok((text, written))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What `/readyz` and the age gauge read: when the config in force was
/// fetched, and how the last attempt ended. Lock-free.
#[derive(Debug, Default)]
pub struct StreamConfigStatus {
    fetched_at_ms: AtomicU64,
    /// Index into `RefreshResult::ALL`.
    last: AtomicU8,
    from_cache: AtomicBool,
}

impl StreamConfigStatus {
    pub fn set_in_force(&self, fetched_at_ms: u64, from_cache: bool) {
        self.fetched_at_ms.store(fetched_at_ms, Ordering::Relaxed);
        self.from_cache.store(from_cache, Ordering::Relaxed);
    }

    pub fn set_last(&self, result: RefreshResult) {
        let i = RefreshResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.last.store(i as u8, Ordering::Relaxed);
    }

    pub fn last(&self) -> RefreshResult {
        RefreshResult::ALL[self.last.load(Ordering::Relaxed) as usize]
    }

    /// Seconds since the config in force was fetched.
    pub fn age_seconds(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.fetched_at_ms.load(Ordering::Relaxed)) / 1000
    }

    /// The `/readyz` detail line.
    pub fn detail_line(&self, now_ms: u64) -> String {
        let age = self.age_seconds(now_ms);
        let source = if self.from_cache.load(Ordering::Relaxed) {
            " (from the cache)"
        } else {
            ""
        };
        match self.last() {
            RefreshResult::Ok => {
                format!("stream config: {age} s old{source}; last refresh ok\n")
            }
            RefreshResult::Cache => {
                format!("stream config: {age} s old{source}; the URL has not answered yet\n")
            }
            failed => format!(
                "stream config: {age} s old{source}, last good kept; last refresh failed: {}\n",
                failed.as_str()
            ),
        }
    }
}

/// The last good text in memory (for a `SIGHUP` while the URL fails).
#[derive(Debug, Default)]
pub struct LastGood(Mutex<Option<(String, u64)>>);

impl LastGood {
    pub fn set(&self, text: String, at_ms: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((text, at_ms));
    }

    pub fn get(&self) -> Option<(String, u64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_set_and_timeouts() {
        crate::metrics::check_label_set::<RefreshResult>().unwrap();
        assert_eq!(
            fetch_timeout(Duration::from_secs(60)),
            Duration::from_secs(10)
        );
        assert_eq!(
            fetch_timeout(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            fetch_timeout(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_cache_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("beacond-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("streams.json");
        write_cache(&path, "{\"a\": 1}").unwrap();
        write_cache(&path, "{\"b\": 2}").unwrap();
        let (text, at) = read_cache(&path).unwrap();
        assert_eq!(text, "{\"b\": 2}");
        assert!(at <= now_ms() && at + 60_000 > now_ms());
        // No temporary file left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("streams.json")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_status_line_tells_age_and_last_result() {
        let s = StreamConfigStatus::default();
        s.set_in_force(10_000, false);
        s.set_last(RefreshResult::Ok);
        assert_eq!(
            s.detail_line(15_500),
            "stream config: 5 s old; last refresh ok\n"
        );
        s.set_last(RefreshResult::Timeout);
        assert_eq!(s.last(), RefreshResult::Timeout);
        let line = s.detail_line(75_000);
        assert!(
            line.contains("65 s old")
                && line.contains("last good kept")
                && line.contains("timeout"),
            "{line}"
        );
        s.set_in_force(10_000, true);
        s.set_last(RefreshResult::Cache);
        assert!(s.detail_line(10_000).contains("from the cache"));
    }

    #[test]
    fn fetch_failures_are_classified() {
        // Nothing listens on port 9 of localhost (discard is not run).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let settings = RemoteSettings {
            uri: format!("http://127.0.0.1:{port}/streams"),
            headers: vec![],
            ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            cache: None,
        };
        let e = fetch(&settings).unwrap_err();
        assert_eq!(e.reason, RefreshResult::Unreachable, "{e}");
    }
}
