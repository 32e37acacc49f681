//! The gateway's own log: tracing to the console and, with `writeFile`, to rotated files.
//!
//! Files are `minigateway.<date>.log` in `logs/` (or `fileDir`), where `<date>` is
//! `YYYY-MM-DD-HH` with hourly rotation and `YYYY-MM-DD` with daily rotation, in UTC.
//! The symlink `minigateway.log` points at the newest file, so `tail -F
//! logs/minigateway.log` follows rotation. At most `maxFiles` files are kept. A
//! non-blocking writer thread does the file I/O.
//!
//! Level and file settings are reloadable: a changed `logLevel` or `[log]` section
//! applies without a restart.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use arc_swap::ArcSwapOption;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation as AppenderRotation};
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::clock;
use crate::config::{Log, LogLevel, Rotation};
use crate::metrics::Reason;

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The current log file writer, swapped when `[log]` changes.
static FILE_WRITER: ArcSwapOption<NonBlocking> = ArcSwapOption::const_empty();

/// Whether events go to the log file; read by the file layer's filter.
static FILE_ENABLED: AtomicBool = AtomicBool::new(false);

/// The settings and writer-thread guard of the open log file.
static FILE_STATE: Mutex<Option<(Log, WorkerGuard)>> = Mutex::new(None);

/// Builds a rotating appender for `<prefix>.<date>.log` files with a `<prefix>.log`
/// symlink to the newest.
pub fn rolling_appender(dir: &Path, prefix: &str, settings: &Log) -> Result<RollingFileAppender, String> {
    std::fs::create_dir_all(dir).map_err(|error| format!("failed to create log folder {}: {error}", dir.display()))?;
    // The appender points its symlink at `dir` joined with the file name, so a relative
    // folder would make the link resolve inside itself.
    let dir =
        std::path::absolute(dir).map_err(|error| format!("failed to resolve log folder {}: {error}", dir.display()))?;
    let dir = dir.as_path();
    let rotation = match settings.rotation {
        Rotation::Hourly => AppenderRotation::HOURLY,
        Rotation::Daily => AppenderRotation::DAILY,
    };
    RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(prefix)
        .filename_suffix("log")
        .latest_symlink(format!("{prefix}.log"))
        .max_log_files(settings.max_files)
        .build(dir)
        .map_err(|error| format!("failed to open log files in {}: {error}", dir.display()))
}

/// The writer that the file layer requests for each event.
struct FileWriter;

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = Box<dyn std::io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match FILE_WRITER.load_full() {
            Some(writer) => Box::new((*writer).clone()),
            None => Box::new(std::io::sink()),
        }
    }
}

/// Builds the filter: the configured level for this crate, warnings for libraries.
/// `RUST_LOG`, when set, replaces it.
fn filter_for(level: LogLevel) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(format!("warn,minigateway={}", level.as_str())),
    }
}

/// Installs the global subscriber with the console output and applies `settings`.
///
/// Later calls only apply `settings`. Returns an error when the log files cannot be
/// opened.
pub fn init(settings: &Log) -> Result<(), String> {
    let (filter, handle) = reload::Layer::new(filter_for(settings.level));
    let console = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let file = fmt::layer()
        .with_writer(FileWriter)
        .with_ansi(false)
        .with_target(false)
        .with_filter(FilterFn::new(|_| FILE_ENABLED.load(Ordering::Relaxed)));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(file)
        .try_init()
        .is_ok();
    if installed {
        let _ = FILTER.set(handle);
    }
    commit(settings.level, prepare(settings)?);
    Ok(())
}

/// A change of the log file output, opened and ready to commit.
pub struct PreparedFile {
    settings: Log,
    /// The new writer, or `None` to stop writing files.
    output: Option<(NonBlocking, WorkerGuard)>,
}

/// Opens the log files that `settings` need, without switching to them yet.
///
/// Returns `None` when nothing about the files changes, or when no subscriber was
/// installed by [`init`] (as in tests that run a gateway inside another program).
pub fn prepare(settings: &Log) -> Result<Option<PreparedFile>, String> {
    if FILTER.get().is_none() {
        return Ok(None);
    }
    let state = FILE_STATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let unchanged = match &*state {
        Some((open, _)) => {
            settings.write_file
                && open.dir == settings.dir
                && open.rotation == settings.rotation
                && open.max_files == settings.max_files
        }
        None => !settings.write_file,
    };
    if unchanged {
        return Ok(None);
    }
    let output = if settings.write_file {
        let appender = rolling_appender(&settings.dir, "minigateway", settings)?;
        Some(
            tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(true)
                .thread_name("log-writer")
                .finish(std::io::BufWriter::new(appender)),
        )
    } else {
        None
    };
    Ok(Some(PreparedFile {
        settings: settings.clone(),
        output,
    }))
}

/// Applies `level` and switches to the prepared file output, if any.
pub fn commit(level: LogLevel, prepared: Option<PreparedFile>) {
    let Some(handle) = FILTER.get() else {
        return;
    };
    if let Some(prepared) = prepared {
        let mut state = FILE_STATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match prepared.output {
            Some((writer, guard)) => {
                FILE_WRITER.store(Some(std::sync::Arc::new(writer)));
                FILE_ENABLED.store(true, Ordering::Relaxed);
                // Dropping the previous guard flushes the previous file.
                *state = Some((prepared.settings, guard));
            }
            None => {
                FILE_ENABLED.store(false, Ordering::Relaxed);
                FILE_WRITER.store(None);
                *state = None;
            }
        }
    }
    let _ = handle.reload(filter_for(level));
}

/// Limits warnings that can repeat for every request to one line per second per
/// reason, and counts the lines it held back.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Clock time from which the next line of each reason may be written.
    next: [AtomicU64; Reason::ALL.len()],
    suppressed: [AtomicU64; Reason::ALL.len()],
}

/// Minimum time between two lines of one reason.
const THROTTLE_INTERVAL_MS: u64 = 1000;

impl Throttle {
    /// Returns `Some(lines held back since the last one)` when a line of `reason` may
    /// be written now, and `None` when it must be held back.
    pub fn allow(&self, reason: Reason) -> Option<u64> {
        let slot = reason as usize;
        let now = clock::now_ms();
        let next = self.next[slot].load(Ordering::Relaxed);
        if now >= next
            && self.next[slot]
                .compare_exchange(next, now + THROTTLE_INTERVAL_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed[slot].swap(0, Ordering::Relaxed));
        }
        self.suppressed[slot].fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Returns the lines held back in total that were not reported yet.
    pub fn pending(&self) -> u64 {
        self.suppressed.iter().map(|count| count.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_counts_held_back_lines() {
        let throttle = Throttle::default();
        assert_eq!(throttle.allow(Reason::UpstreamConnect), Some(0));
        assert_eq!(throttle.allow(Reason::UpstreamConnect), None);
        assert_eq!(throttle.allow(Reason::UpstreamConnect), None);
        assert_eq!(
            throttle.allow(Reason::Banned),
            Some(0),
            "reasons are throttled separately"
        );
        assert_eq!(throttle.pending(), 2);

        throttle.next[Reason::UpstreamConnect as usize].store(0, Ordering::Relaxed);
        assert_eq!(throttle.allow(Reason::UpstreamConnect), Some(2));
        assert_eq!(throttle.pending(), 0);
    }
}
