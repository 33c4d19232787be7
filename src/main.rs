//! The `beacond` binary: command line, logging, runtime, signals.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

use beacond::config::Config;
use beacond::service::Service;
use beacond::sink::KafkaSink;

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
    config.resolve_hostname();
    config.check_message_size()?;
    if args.check {
        KafkaSink::validate_properties(&config).context("kafka.properties")?;
        print!("{}", config.to_toml());
        return Ok(());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("beacond-worker")
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let service = Service::bind(config).await?;
        service.run(shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    tracing::info!("beacond stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
