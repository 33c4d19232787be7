//! `loadtest`: see `loadtest --help` and loadtest/README.md.

use clap::Parser;
use loadtest::cli::Args;

fn main() {
    let args = Args::parse();
    args.check();
    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, 64);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = loadtest::run::run(args.clone()) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    let code = match result
        .and_then(|(report, code)| loadtest::run::emit(&args, &report).map(|()| code))
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: error: {e:#}");
            1
        }
    };
    // Do not wait for stray tasks (e.g. connections a stalled server holds).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
