//! Log output through tracing: console now, with the level from `logLevel`.
//!
//! The filter is reloadable, so a changed `logLevel` applies without a restart.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogLevel;

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Builds the filter: the configured level for this crate, warnings for libraries.
/// `RUST_LOG`, when set, replaces it.
fn filter_for(level: LogLevel) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(format!("warn,minigateway={}", level.as_str())),
    }
}

/// Installs the global subscriber; later calls only change the level.
pub fn init(level: LogLevel) {
    let (filter, handle) = reload::Layer::new(filter_for(level));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .try_init()
        .is_ok();
    if installed {
        let _ = FILTER.set(handle);
    } else {
        set_level(level);
    }
}

/// Changes the level of the installed subscriber.
pub fn set_level(level: LogLevel) {
    if let Some(handle) = FILTER.get() {
        let _ = handle.reload(filter_for(level));
    }
}
