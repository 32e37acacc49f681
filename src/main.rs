//! The `minigateway` command: parses the command line and starts the gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use minigateway::config::{self, Config};
use minigateway::listener::Sharing;
use minigateway::reload::Trigger;
use minigateway::{Gateway, logging, tls};

/// An HTTP/HTTPS gateway with host routing, load balancing, flood defences and live reload.
#[derive(Debug, Parser)]
#[command(name = "minigateway", version)]
struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,

    /// Check the configuration file and the certificates it names, and exit with 0 if
    /// they are valid, 1 if not.
    #[arg(short = 't', long = "test")]
    test: bool,

    /// Send a signal to the running instance named by the pid file, then exit.
    #[arg(short = 's', long = "signal", value_name = "SIGNAL")]
    signal: Option<ControlSignal>,

    /// Number of worker threads; defaults to one per CPU core.
    #[arg(short = 'w', long = "workers", value_name = "N")]
    workers: Option<usize>,

    /// Start beside a running instance on the same addresses, for a zero-downtime binary
    /// upgrade: both serve until you stop the old one (its pid is printed).
    #[arg(long = "upgrade")]
    upgrade: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ControlSignal {
    /// Reload the configuration and certificates (SIGHUP).
    Reload,
    /// Stop gracefully (SIGTERM).
    Stop,
}

/// Returns the pid file of the instance that runs with `config`.
fn pid_file(config: &Path) -> PathBuf {
    config::prefix_of(config).join("logs").join("minigateway.pid")
}

/// Checks the configuration and loads every certificate and key pair, as `nginx -t` does.
fn test_config(path: &Path) -> ExitCode {
    let checked = Config::load(path)
        .map_err(|error| error.to_string())
        .and_then(|config| {
            let mut warnings = minigateway::guard::ineffective_settings(&config);
            warnings.extend(tls::check(&config).map_err(|error| error.to_string())?);
            Ok(warnings)
        });
    match checked {
        Ok(warnings) => {
            for warning in warnings {
                eprintln!("minigateway: warning: {warning}");
            }
            println!("minigateway: configuration file {} test is successful", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            eprintln!("minigateway: configuration file {} test failed", path.display());
            ExitCode::FAILURE
        }
    }
}

fn send_signal(config: &Path, signal: ControlSignal) -> anyhow::Result<()> {
    let file = pid_file(config);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("failed to read pid file {}; is minigateway running?", file.display()))?;
    let pid: libc::pid_t = text
        .trim()
        .parse()
        .with_context(|| format!("pid file {} does not contain a process id", file.display()))?;
    let number = match signal {
        ControlSignal::Reload => SIGHUP,
        ControlSignal::Stop => SIGTERM,
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, number) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("failed to signal process {pid} from {}", file.display()));
    }
    Ok(())
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    logging::init(&config.log).map_err(anyhow::Error::msg)?;

    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT]).context("failed to install signal handlers")?;
    let sharing = if cli.upgrade {
        Sharing::Shared
    } else {
        Sharing::Exclusive
    };
    let gateway = Gateway::start_with(&cli.config, sharing).await?;
    let reloads = gateway.reload_handle();

    let pid_path = pid_file(&cli.config);
    let own_pid = format!("{}\n", std::process::id());
    if cli.upgrade {
        if let Ok(old) = std::fs::read_to_string(&pid_path) {
            tracing::info!(
                "started beside the instance with pid {}; stop it with `kill -TERM {}` once this one serves",
                old.trim(),
                old.trim()
            );
        }
    }
    let written = pid_path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&pid_path, &own_pid));
    if let Err(error) = written {
        tracing::warn!(file = %pid_path.display(), error = %error, "failed to write pid file; `-s` will not find this instance");
    }

    while let Some(signal) = signals.next().await {
        match signal {
            SIGHUP => {
                tracing::info!("SIGHUP received; reloading");
                let reloads = reloads.clone();
                tokio::spawn(async move { reloads.reload(Trigger::Signal).await });
            }
            _ => {
                tracing::info!(signal, "stop signal received");
                break;
            }
        }
    }

    gateway.shutdown().await;
    // After an upgrade the file names the new instance, which must stay reachable.
    if std::fs::read_to_string(&pid_path).is_ok_and(|text| text == own_pid) {
        let _ = std::fs::remove_file(&pid_path);
    }
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.test {
        return test_config(&cli.config);
    }
    if let Some(signal) = cli.signal {
        return match send_signal(&cli.config, signal) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("minigateway: {error:#}");
                ExitCode::FAILURE
            }
        };
    }

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = cli.workers {
        builder.worker_threads(workers.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("minigateway: failed to start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&cli));
    // Connections that outlived shutdownTimeout are dropped here.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("minigateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}
