//! The `beacond` binary: command line, logging, runtime, signals.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

use beacond::config::Config;
use beacond::event_rules::EventRulesSource;
use beacond::service::{EventsReloader, Service};
use beacond::sink::KafkaSink;
use beacond::systemd::ServiceManager;
use beacond::tls::TlsTerminator;

/// Edge beacon collector: EventLogging beacons from HTTP to Kafka.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The TOML config file (every key is documented in config/beacond.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the config, print the effective config, and exit.
    #[arg(long)]
    check: bool,
    /// Once both listeners are bound, write their addresses to FILE
    /// (`beacon=ADDR` and `admin=ADDR` lines, replaced atomically): how a
    /// supervisor or a test learns the ports when the config says port 0.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BEACOND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mut config = Config::load(&args.config)?;
    beacond::service::prepare(&mut config)?;
    if args.check {
        KafkaSink::validate_properties(&config).context("kafka.properties")?;
        if let Some(tls) = &config.http.tls {
            TlsTerminator::new(tls)?;
        }
        let hostname = config.output.hostname.clone().unwrap_or_default();
        if let Some(source) = EventRulesSource::new(&config.events, &hostname) {
            let validator = source.checking().load()?;
            eprintln!(
                "events: {} streams, {} schemas",
                validator.stream_config().len(),
                validator.schema_repository().len()
            );
        }
        print!("{}", config.to_toml());
        return Ok(());
    }

    let workers = match config.http.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One worker: no work stealing, no cross-thread wake-ups.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder
        .enable_all()
        .thread_name("beacond-worker")
        .build()
        .context("cannot start the runtime")?;
    tracing::info!(workers, "runtime started");
    runtime.block_on(async {
        // SIGHUP's default action is to end the process: take it over
        // before anything else, so a HUP during start-up, or while the events
        // intake is off, is never fatal.
        let hangups = hangup_signals();
        let service = Service::bind(config)
            .await?
            .with_service_manager(ServiceManager::from_env());
        if let Some(path) = &args.ready_file {
            service
                .write_ready_file(path)
                .with_context(|| format!("--ready-file {}", path.display()))?;
        }
        reload_on_sighup(hangups, service.events_reloader(), service.tls());
        let (shutdown, hurry) = shutdown_signals();
        service.run_until(shutdown, hurry).await?;
        anyhow::Ok(())
    })?;
    tracing::info!("beacond stopped");
    Ok(())
}

/// The SIGHUP stream, installed as early as possible.
fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; a SIGHUP ends the process");
            None
        }
    }
}

/// On each SIGHUP, reloads the TLS certificate (with `[http.tls]`) and the
/// events intake's stream config and schemas, on a blocking thread (a
/// failure keeps what is in force; it is logged and counted there).
fn reload_on_sighup(
    hangups: Option<tokio::signal::unix::Signal>,
    reloader: Option<EventsReloader>,
    tls: Option<TlsTerminator>,
) {
    let Some(mut hup) = hangups else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Some(tls) = tls.clone() {
                tracing::info!("SIGHUP received: reloading the TLS certificate");
                let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
            }
            let Some(reloader) = reloader.clone() else {
                tracing::info!("SIGHUP received: the events intake is off, nothing to reload");
                continue;
            };
            tracing::info!("SIGHUP received: reloading the stream config and schemas");
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
    });
}

/// Two futures: the first resolves on the first SIGTERM or SIGINT (start the
/// graceful shutdown), the second on the next one (cut the drain short).
fn shutdown_signals() -> (
    impl std::future::Future<Output = ()>,
    impl std::future::Future<Output = ()>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::spawn(async move {
                for tx in [first_tx, second_tx] {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM received"),
                        _ = int.recv() => tracing::info!("SIGINT received"),
                    }
                    let _ = tx.send(());
                }
            });
        }
        _ => tracing::error!("cannot install signal handlers; stop with SIGKILL"),
    }
    let wait = |rx: tokio::sync::oneshot::Receiver<()>| async move {
        // A dropped sender (no handlers) means: never.
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    (wait(first_rx), wait(second_rx))
}
