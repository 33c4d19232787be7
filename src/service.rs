//! Service: wires the modules together and runs them until shutdown.
//!
//! Owns start-up order (config checks, producer, listeners, probe) and the
//! shutdown sequence: readiness turns 503, the beacon listener stops accepting
//! and finishes in-flight requests (those unfinished after the grace period
//! are closed unanswered), the sink is closed (later enqueues are refused),
//! the producer is flushed (bounded by `shutdown.flush_timeout_seconds`), and
//! what could not be delivered is counted and logged.
//!
//! Must never: exit without flushing the producer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{self, Readiness};
use crate::config::{Config, ConfigError};
use crate::event_rules::{EventRulesError, EventRulesSource, ReloadMetrics, ReloadResult};
use crate::intake::events::{EventIntake, RulesSlot};
use crate::intake::Intake;
use crate::listener::{self, ConnectionSettings};
use crate::metrics::Metrics;
use crate::sink::{KafkaSink, SinkError};
use crate::spool::{Spool, SpoolOpenError, SpoolSettings};
use crate::systemd::ServiceManager;
use crate::tls::TlsTerminator;

/// How often the readiness probe asks the broker for metadata.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long in-flight requests may take once shutdown begins.
const REQUEST_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the probe or stream config thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Spool(#[from] SpoolOpenError),
    #[error(transparent)]
    Intake(#[from] crate::intake::IntakeError),
    #[error(transparent)]
    EventRules(#[from] EventRulesError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Reloads the events intake's stream config and schemas (`SIGHUP`).
#[derive(Clone)]
pub struct EventsReloader {
    source: EventRulesSource,
    slot: RulesSlot,
    metrics: ReloadMetrics,
    /// One reload or refresh at a time, so a refresh never puts back the
    /// schemas a `SIGHUP` just replaced.
    lock: Arc<std::sync::Mutex<()>>,
}

impl EventsReloader {
    /// Loads the rules again and puts them in force; on failure the rules in
    /// force stay (logged at ERROR, counted). Blocking: run it on a blocking
    /// thread.
    pub fn reload(&self) -> Result<(), EventRulesError> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let started = std::time::Instant::now();
        match self.source.load() {
            Ok(validator) => {
                let schemas = validator.schema_repository().len();
                let streams = validator.stream_config().len();
                self.slot.replace(validator);
                self.metrics.results.inc(ReloadResult::Ok);
                self.metrics.mark_loaded();
                tracing::info!(
                    schemas,
                    streams,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "stream config and schemas reloaded"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.results.inc(ReloadResult::Failed);
                tracing::error!(error = %e, "reload failed; the stream config and schemas in force stay");
                Err(e)
            }
        }
    }
}

impl EventsReloader {
    /// Fetches `events.stream_config_uri` once and, if the answer is good,
    /// puts it in force with the schemas in force (the `SIGHUP` path:
    /// `RulesSlot::replace`). A failure keeps the rules in force (logged,
    /// counted). Blocking: the refresh thread only.
    pub fn refresh(&self) {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Ok(validator)) = self.source.refresh(self.slot.schemas()) {
            let streams = validator.stream_config().len();
            self.slot.replace(validator);
            tracing::debug!(
                streams,
                "stream config refreshed from events.stream_config_uri"
            );
        }
    }

    /// Refreshes every `events.stream_config_ttl_seconds` on a thread of its
    /// own until `stop` is set; `None` for a stream config file.
    fn spawn_refresh(
        &self,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
        let Some(ttl) = self.source.refresh_interval() else {
            return Ok(None);
        };
        let this = self.clone();
        let step = ttl.min(Duration::from_millis(250));
        std::thread::Builder::new()
            .name("beacond-streams".into())
            .spawn(move || {
                let mut next = std::time::Instant::now() + ttl;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(step);
                    this.source.update_age();
                    if std::time::Instant::now() >= next {
                        this.refresh();
                        next = std::time::Instant::now() + ttl;
                    }
                }
            })
            .map(Some)
    }
}

/// Completes a parsed config with what needs the machine (the host name) and
/// checks what spans modules (message sizes against the producer's limit).
pub fn prepare(config: &mut Config) -> Result<(), ServiceError> {
    config.resolve_hostname(crate::meta::machine_fqdn);
    config.check_message_size()?;
    Ok(())
}

/// A bound, not yet running, service.
pub struct Service {
    config: Config,
    beacon_listener: TcpListener,
    admin_listener: TcpListener,
    metrics: Arc<Metrics>,
    sink: Arc<KafkaSink>,
    spool: Option<Spool>,
    intake: Arc<Intake<KafkaSink>>,
    reloader: Option<EventsReloader>,
    tls: Option<TlsTerminator>,
    manager: ServiceManager,
}

impl Service {
    /// Checks the config, creates the producer and binds both listeners.
    pub async fn bind(mut config: Config) -> Result<Service, ServiceError> {
        prepare(&mut config)?;
        let metrics = Arc::new(Metrics::new());
        // Every file is read and every schema compiled now, before serving.
        let rules_source = EventRulesSource::new(
            &config.events,
            config.output.hostname.as_deref().unwrap_or(""),
        );
        if let Some(source) = &rules_source {
            source.register_metrics(&metrics);
        }
        let validator = rules_source
            .as_ref()
            .map(EventRulesSource::load)
            .transpose()?;
        let mut readiness_topics = vec![config.kafka.topic.clone()];
        if let Some(v) = &validator {
            readiness_topics.push(v.error_topic().to_string());
        }
        // The spool's capacity, so alerts can say "near full" (0: no spool).
        let spool_max_bytes = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        if config.spool.enabled {
            spool_max_bytes.set(i64::try_from(config.spool.max_bytes).unwrap_or(i64::MAX));
        }
        metrics.register(
            "spool_max_bytes",
            "spool.max_bytes: the spool is full at this many bytes (0: no spool)",
            spool_max_bytes,
        );
        // The certificate is read now: a bad one stops start-up.
        let tls = config
            .http
            .tls
            .as_ref()
            .map(|t| TlsTerminator::new(t).map(|t| t.with_metrics(&metrics)))
            .transpose()?;
        let mut spool = match SpoolSettings::from_config(&config.spool) {
            Some(settings) => Some(Spool::open(settings, metrics.spool.clone())?),
            None => None,
        };
        let sink = KafkaSink::with_readiness_topics(
            &config,
            metrics.clone(),
            spool.as_ref().map(Spool::handle),
            readiness_topics,
        )?;
        if let Some(spool) = spool.as_mut() {
            spool.start(sink.clone())?;
        }
        let mut intake = Intake::new(&config, sink.clone(), metrics.clone())?;
        let mut reloader = None;
        if let (Some(validator), Some(source)) = (validator, rules_source) {
            let events = EventIntake::new(&config, validator, sink.clone(), &metrics);
            let reload_metrics = ReloadMetrics::new(&metrics);
            reload_metrics.mark_loaded();
            reloader = Some(EventsReloader {
                source,
                slot: events.rules_slot(),
                metrics: reload_metrics,
                lock: Arc::default(),
            });
            intake = intake.with_events(events, &metrics);
        }
        let bind = |key: &'static str, addr: SocketAddr, send_buffer: Option<usize>| {
            listener::bind(addr, send_buffer).map_err(|source| ServiceError::Bind {
                key,
                addr,
                source,
            })
        };
        let beacon_listener = bind(
            "http.listen",
            config.http.listen,
            Some(config.http.send_buffer_bytes),
        )?;
        let admin_listener = bind("admin.listen", config.admin.listen, None)?;
        Ok(Service {
            config,
            beacon_listener,
            admin_listener,
            metrics,
            sink,
            spool,
            intake: Arc::new(intake),
            reloader,
            tls,
            manager: ServiceManager::disabled(),
        })
    }

    /// Tells `manager` (systemd) when the service is ready, alive and
    /// stopping; without it, nobody is told.
    pub fn with_service_manager(mut self, manager: ServiceManager) -> Self {
        self.manager = manager;
        self
    }

    /// The beacon listener's TLS (its certificate reloads on `SIGHUP`);
    /// `None` without `[http.tls]`.
    pub fn tls(&self) -> Option<TlsTerminator> {
        self.tls.clone()
    }

    /// Reloads the events intake's rules; `None` while it is off.
    pub fn events_reloader(&self) -> Option<EventsReloader> {
        self.reloader.clone()
    }

    pub fn beacon_addr(&self) -> SocketAddr {
        self.beacon_listener
            .local_addr()
            .unwrap_or(self.config.http.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin.listen)
    }

    /// Writes the bound addresses to `path` (`beacon=ADDR\nadmin=ADDR\n`):
    /// into a temporary file next to it, then renamed over it, so a reader
    /// sees the whole file or none. Start-up only (blocking I/O).
    pub fn write_ready_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = format!(
            "beacon={}\nadmin={}\n",
            self.beacon_addr(),
            self.admin_addr()
        );
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// Serves until `shutdown` resolves, then drains and flushes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
        self.run_until(shutdown, std::future::pending()).await
    }

    /// Serves until `shutdown` resolves; then `/readyz` turns 503 and the
    /// listener keeps serving for `shutdown.drain_seconds` (cut short when
    /// `hurry` resolves), then stops accepting, finishes in-flight requests,
    /// flushes the producer and spools what it could not deliver.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
        hurry: impl Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        let Service {
            config,
            beacon_listener,
            admin_listener,
            metrics,
            sink,
            spool,
            intake,
            reloader,
            tls,
            manager,
        } = self;
        tracing::info!(
            beacon = %beacon_listener.local_addr().map_or(config.http.listen, |a| a),
            admin = %admin_listener.local_addr().map_or(config.admin.listen, |a| a),
            topic = %config.kafka.topic,
            format = ?config.output.format,
            "beacond serving"
        );
        let stop_probe = Arc::new(AtomicBool::new(false));
        let probe = sink
            .spawn_probe(PROBE_INTERVAL, stop_probe.clone())
            .map_err(ServiceError::Thread)?;
        let stop_refresh = Arc::new(AtomicBool::new(false));
        let mut readiness = Readiness::new(sink.clone());
        if let Some(reloader) = &reloader {
            if let Some(status) = reloader.source.remote_status() {
                readiness = readiness.with_stream_config(status);
            }
            reloader
                .spawn_refresh(stop_refresh.clone())
                .map_err(ServiceError::Thread)?;
        }
        let readiness = Arc::new(readiness);

        let settings = ConnectionSettings {
            header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
            max_buf_size: config.http.max_query_bytes + 16 * 1024,
            write_timeout: Duration::from_millis(config.http.write_timeout_ms),
            shutdown_grace: REQUEST_GRACE,
        };
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin_task = {
            let metrics = metrics.clone();
            let readiness = readiness.clone();
            let handler = move |req: http::Request<listener::RequestBody>, _peer| {
                let response = admin::handle(&req, &metrics, &readiness);
                async move { response }
            };
            let admin_settings = ConnectionSettings {
                shutdown_grace: Duration::from_secs(1),
                ..settings
            };
            tokio::spawn(listener::serve(
                admin_listener,
                handler,
                admin_settings,
                None,
                async {
                    let _ = admin_stop_rx.await;
                },
            ))
        };

        let handler = move |req: http::Request<listener::RequestBody>, peer| {
            let intake = intake.clone();
            async move { intake.handle(req, peer).await }
        };
        let status = {
            let (metrics, readiness, sink) = (metrics.clone(), readiness.clone(), sink.clone());
            move || status_line(&metrics, &readiness, &sink)
        };
        // Listeners bound, producer and spool up: started (the broker's state
        // is `/readyz`'s business).
        manager.ready(status()).await;
        let stop_heartbeat = Arc::new(AtomicBool::new(false));
        manager.spawn_heartbeat(status.clone(), stop_heartbeat.clone());
        let draining = readiness.clone();
        let stopping = manager.clone();
        let drain_seconds = config.shutdown.drain_seconds;
        listener::serve_with_edge(
            beacon_listener,
            handler,
            settings,
            match &tls {
                Some(tls) => listener::EdgeSettings::from_config(&config).with_tls(tls),
                None => listener::EdgeSettings::from_config(&config),
            },
            Some(metrics.clone()),
            async move {
                shutdown.await;
                draining.start_draining();
                stopping
                    .stopping(format!("draining for {drain_seconds} s, then flushing"))
                    .await;
                tracing::info!(
                    drain_seconds,
                    "shutdown requested: not ready; serving on while the load balancer notices"
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(drain_seconds)) => {}
                    _ = hurry => tracing::info!("second signal: drain cut short"),
                }
                tracing::info!("no longer accepting; finishing in-flight requests");
            },
        )
        .await;
        // Every connection task has ended (those still running after the
        // grace period were ended without an answer): nothing enqueues from
        // here on, and the sink refuses anything that would.
        sink.close();

        let flush_timeout = Duration::from_secs(config.shutdown.flush_timeout_seconds);
        if let Some(spool) = sink.spool() {
            spool.stop_dispatch();
        }
        tracing::info!(in_flight = sink.in_flight(), "flushing the producer");
        let flushing = sink.clone();
        let left = tokio::task::spawn_blocking(move || flushing.flush_and_spool(flush_timeout))
            .await
            .unwrap_or_else(|_| sink.in_flight());
        if left > 0 {
            tracing::error!(left, "messages neither delivered nor spooled: lost");
        } else {
            tracing::info!("producer flushed");
        }
        if let Some(spool) = spool {
            let _ = tokio::task::spawn_blocking(move || spool.shutdown()).await;
            let waiting = metrics.spool.records.get();
            if waiting > 0 {
                tracing::info!(
                    records = waiting,
                    "spool closed; its records are delivered at the next start"
                );
            } else {
                tracing::info!("spool closed, empty");
            }
        }
        stop_probe.store(true, std::sync::atomic::Ordering::Relaxed);
        stop_heartbeat.store(true, std::sync::atomic::Ordering::Relaxed);
        // Not joined: a fetch in progress ends within its timeout.
        stop_refresh.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = admin_stop_tx.send(());
        let _ = admin_task.await;
        let _ = tokio::task::spawn_blocking(move || probe.join()).await;
        Ok(())
    }
}

/// The one-line summary systemd shows (`STATUS=`).
fn status_line(metrics: &Metrics, readiness: &Readiness, sink: &KafkaSink) -> String {
    let state = if readiness.is_ready() {
        "ready"
    } else {
        "not ready"
    };
    let delivered: u64 = [
        &metrics.main_topic,
        &metrics.error_topic,
        &metrics.event_topic,
        &metrics.event_error_topic,
    ]
    .iter()
    .map(|t| t.delivered.get())
    .sum();
    format!(
        "{state}; broker {}; {} beacons accepted; {delivered} messages delivered; spool {} records",
        if sink.broker_reachable() {
            "reachable"
        } else {
            "unreachable"
        },
        metrics.accepted.get(),
        metrics.spool.records.get(),
    )
}
