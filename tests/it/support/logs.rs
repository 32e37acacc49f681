//! Captures the gateway's log lines that contain a watched text, for tests that check
//! what is logged. Tests share one global subscriber, so each watches text that only
//! its own gateway logs, such as a client address no other test uses.

use std::io::Write;
use std::sync::{Mutex, Once};

use tracing_subscriber::fmt::MakeWriter;

struct Captured {
    watched: Vec<String>,
    lines: Vec<String>,
}

static CAPTURED: Mutex<Captured> = Mutex::new(Captured {
    watched: Vec::new(),
    lines: Vec::new(),
});

fn captured() -> std::sync::MutexGuard<'static, Captured> {
    CAPTURED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Installs the capturing subscriber for the whole test process, once.
fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("minigateway=debug")
            .with_ansi(false)
            .with_writer(CaptureWriter)
            .try_init();
    });
}

/// Starts keeping every log line that contains `text`.
pub fn watch(text: &str) {
    install();
    captured().watched.push(text.to_owned());
}

/// Returns the kept lines that contain `text`.
pub fn lines_with(text: &str) -> Vec<String> {
    captured()
        .lines
        .iter()
        .filter(|line| line.contains(text))
        .cloned()
        .collect()
}

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(bytes);
        let mut captured = captured();
        if captured.watched.iter().any(|watched| text.contains(watched.as_str())) {
            captured.lines.push(text.into_owned());
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CaptureWriter {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter
    }
}
