//! The access log: one line per request, in nginx's `combined` format or as JSON.
//!
//! Each combined line is nginx's `combined` format followed by the upstream address,
//! the upstream status and the request time in seconds:
//!
//! ```text
//! 127.0.0.1 - - [04/Dec/2026:20:01:33 +0000] "GET /a?b=1 HTTP/1.1" 200 5 "-" "curl/8.5.0" "127.0.0.1:8081" 200 0.001
//! ```
//!
//! Times are UTC. Lines go to their own rotated files (`access.<date>.log`, with the
//! symlink `access.log` pointing at the newest) through a bounded queue and a writer
//! thread. When the queue is full the line is dropped and counted, so a slow disk never
//! blocks a request.

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use serde::Serialize;
use time::OffsetDateTime;
use tracing_appender::rolling::RollingFileAppender;

use crate::config::{AccessLogFormat, Log};
use crate::logging::rolling_appender;

/// Maximum lines in the access log queue; new lines are dropped past it.
const QUEUE_LINES: usize = 16_384;

/// Bytes the writer thread gathers before a write. It flushes after each drain, so a
/// drain of many lines costs few system calls.
const WRITE_BUFFER: usize = 64 * 1024;

/// Time between two drains of the queue: the most a line waits before it is written.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Nice value of the writer thread, so that on a busy core the threads serving
/// requests run first and writing the log waits.
const WRITER_NICE: libc::c_int = 10;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The fields of one access log line.
#[derive(Debug)]
pub struct Record {
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub host: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub route: Option<Box<str>>,
    pub status: u16,
    pub bytes_sent: u64,
    /// The target's address, when an upstream was tried.
    pub upstream: Option<Box<str>>,
    /// The upstream's response status, when one arrived.
    pub upstream_status: Option<u16>,
    pub duration: Duration,
}

fn version_text(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Returns the request target as sent: the path and query, or the whole URI for
/// absolute-form requests.
fn request_target(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// Appends bytes with `"`, `\` and bytes outside printable ASCII written as `\xHH`, as
/// nginx escapes variables in its log lines.
fn escape_into(line: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        match byte {
            b'"' | b'\\' => {
                line.extend_from_slice(&[b'\\', b'x', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]])
            }
            0x20..=0x7e => line.push(byte),
            _ => line.extend_from_slice(&[b'\\', b'x', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]),
        }
    }
}

/// Writes a header value between double quotes, escaped, and `-` when absent, as
/// nginx does.
fn write_quoted(line: &mut Vec<u8>, value: Option<&[u8]>) {
    line.push(b'"');
    match value {
        None => line.push(b'-'),
        Some(bytes) => escape_into(line, bytes),
    }
    line.push(b'"');
}

/// Appends an unsigned integer in decimal.
fn push_decimal(line: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    line.extend_from_slice(&digits[start..]);
}

/// Appends an IP address; IPv4 without `fmt`, IPv6 through its `Display`.
fn push_ip(line: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    line.push(b'.');
                }
                push_decimal(line, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(line, "{v6}");
        }
    }
}

thread_local! {
    /// The last formatted timestamp and the Unix second it shows.
    static TIMESTAMP: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
}

/// Appends `[04/Dec/2026:20:01:33 +0000]`, formatting it once per second per thread.
fn push_timestamp(line: &mut Vec<u8>, time: SystemTime) {
    let second = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    TIMESTAMP.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let time = OffsetDateTime::from(time);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "[{:02}/{}/{}:{:02}:{:02}:{:02} +0000]",
                time.day(),
                MONTHS[usize::from(u8::from(time.month())) - 1],
                time.year(),
                time.hour(),
                time.minute(),
                time.second()
            );
            cached.0 = second;
        }
        line.extend_from_slice(&cached.1);
    });
}

impl Record {
    /// Formats the record as one combined-format line, newline included.
    ///
    /// Built with plain byte pushes rather than `fmt`, which cost several thousand
    /// instructions per line; the timestamp is formatted once per second.
    pub fn combined(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(256);
        push_ip(&mut line, self.client);
        line.extend_from_slice(b" - - ");
        push_timestamp(&mut line, self.time);
        line.push(b' ');

        line.push(b'"');
        escape_into(&mut line, self.method.as_str().as_bytes());
        line.push(b' ');
        escape_into(&mut line, request_target(&self.uri).as_bytes());
        line.push(b' ');
        line.extend_from_slice(version_text(self.version).as_bytes());
        line.push(b'"');
        line.push(b' ');
        push_decimal(&mut line, u64::from(self.status));
        line.push(b' ');
        push_decimal(&mut line, self.bytes_sent);
        line.push(b' ');

        write_quoted(&mut line, self.referer.as_ref().map(HeaderValue::as_bytes));
        line.push(b' ');
        write_quoted(&mut line, self.user_agent.as_ref().map(HeaderValue::as_bytes));
        line.push(b' ');
        write_quoted(&mut line, self.upstream.as_deref().map(str::as_bytes));

        line.push(b' ');
        match self.upstream_status {
            Some(status) => push_decimal(&mut line, u64::from(status)),
            None => line.push(b'-'),
        }
        // Whole milliseconds, rounded down, as nginx writes $request_time.
        line.push(b' ');
        let millis = self.duration.as_millis().min(u128::from(u64::MAX)) as u64;
        push_decimal(&mut line, millis / 1000);
        line.push(b'.');
        let fraction = millis % 1000;
        line.extend_from_slice(&[
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ]);
        line.push(b'\n');
        line
    }

    /// Formats the record as one JSON object, newline included.
    pub fn json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Line<'a> {
            time: String,
            client: String,
            method: &'a str,
            uri: &'a str,
            protocol: &'static str,
            host: Option<&'a str>,
            route: Option<&'a str>,
            status: u16,
            bytes_sent: u64,
            referer: Option<&'a str>,
            user_agent: Option<&'a str>,
            upstream: Option<&'a str>,
            upstream_status: Option<u16>,
            request_time: f64,
        }
        fn text(value: &Option<HeaderValue>) -> Option<&str> {
            value.as_ref().and_then(|v| v.to_str().ok())
        }
        let time = OffsetDateTime::from(self.time)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = Line {
            time,
            client: self.client.to_string(),
            method: self.method.as_str(),
            uri: request_target(&self.uri),
            protocol: version_text(self.version),
            host: text(&self.host),
            route: self.route.as_deref(),
            status: self.status,
            bytes_sent: self.bytes_sent,
            referer: text(&self.referer),
            user_agent: text(&self.user_agent),
            upstream: self.upstream.as_deref(),
            upstream_status: self.upstream_status,
            request_time: (self.duration.as_secs_f64() * 1e6).round() / 1e6,
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// An open access log: the queue to its writer thread and the rotated files behind it.
pub struct AccessLog {
    queue: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    format: AccessLogFormat,
    /// The settings this log was opened with, to tell whether a reload changes them.
    settings: Log,
    writer: Option<JoinHandle<()>>,
}

/// Writes queued lines to the files every `DRAIN_INTERVAL` until the queue closes.
///
/// The thread sleeps between drains instead of waiting on the queue, so a request that
/// queues a line never wakes it: at moderate rates, waking a writer for every line cost
/// more CPU than formatting the line.
fn drain_loop(lines: Receiver<Vec<u8>>, appender: RollingFileAppender) {
    // On Linux, PRIO_PROCESS with 0 sets the nice value of the calling thread only.
    // SAFETY: setpriority(2) has no memory-safety preconditions.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WRITER_NICE) };
    let mut file = BufWriter::with_capacity(WRITE_BUFFER, appender);
    loop {
        std::thread::sleep(DRAIN_INTERVAL);
        let mut closed = false;
        loop {
            match lines.try_recv() {
                Ok(line) => {
                    let _ = file.write_all(&line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if let Err(error) = file.flush() {
            eprintln!("minigateway: failed to write the access log: {error}");
        }
        if closed {
            return;
        }
    }
}

impl AccessLog {
    /// Opens the access log files that `settings` describe.
    pub fn open(settings: &Log) -> Result<AccessLog, String> {
        let appender = rolling_appender(&settings.dir, "access", settings)?;
        let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE_LINES);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || drain_loop(lines, appender))
            .map_err(|error| format!("failed to start the access log writer: {error}"))?;
        Ok(AccessLog {
            queue: Some(queue),
            dropped: Arc::default(),
            format: settings.access_log_format,
            settings: settings.clone(),
            writer: Some(writer),
        })
    }

    /// Returns whether this log was opened with the file settings in `settings`.
    pub fn matches(&self, settings: &Log) -> bool {
        self.settings.dir == settings.dir
            && self.settings.rotation == settings.rotation
            && self.settings.max_files == settings.max_files
            && self.settings.access_log_format == settings.access_log_format
    }

    /// Queues one line; when the queue is full the line is dropped and counted, so this
    /// never waits for the disk.
    pub fn write(&self, record: &Record) {
        let line = match self.format {
            AccessLogFormat::Combined => record.combined(),
            AccessLogFormat::Json => record.json(),
        };
        let Some(queue) = &self.queue else { return };
        if queue.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns the lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }
}

impl AccessLog {
    /// Closes the queue and waits for the writer to write what is left; this blocks for
    /// up to one drain interval.
    ///
    /// A log dropped without this (when a reload replaces it) is still written in full:
    /// its writer ends by itself after the next drain.
    pub fn close(mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_414_493),
            client: "127.0.0.1".parse().unwrap(),
            method: Method::GET,
            uri: "/a?b=1".parse().unwrap(),
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("app.test")),
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8.5.0 \"x\"")),
            route: Some("app".into()),
            status: 200,
            bytes_sent: 5,
            upstream: Some("127.0.0.1:8081".into()),
            upstream_status: Some(200),
            duration: Duration::from_micros(1500),
        }
    }

    #[test]
    fn combined_line_matches_nginx_layout() {
        let line = String::from_utf8(record().combined()).unwrap();
        assert_eq!(
            line,
            "127.0.0.1 - - [04/Dec/2026:20:01:33 +0000] \"GET /a?b=1 HTTP/1.1\" 200 5 \"-\" \
             \"curl/8.5.0 \\x22x\\x22\" \"127.0.0.1:8081\" 200 0.001\n"
        );
    }

    #[test]
    fn combined_line_without_upstream() {
        let mut record = record();
        record.upstream = None;
        record.upstream_status = None;
        let line = String::from_utf8(record.combined()).unwrap();
        assert!(line.ends_with("\"-\" - 0.001\n"), "{line}");
    }

    #[test]
    fn json_line_parses() {
        let value: serde_json::Value = serde_json::from_slice(&record().json()).unwrap();
        assert_eq!(value["status"], 200);
        assert_eq!(value["uri"], "/a?b=1");
        assert_eq!(value["upstream"], "127.0.0.1:8081");
        assert_eq!(value["time"], "2026-12-04T20:01:33Z");
        assert!(value["referer"].is_null());
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn decimals_and_addresses() {
        let mut line = Vec::new();
        push_decimal(&mut line, 0);
        line.push(b' ');
        push_decimal(&mut line, 18_446_744_073_709_551_615);
        line.push(b' ');
        push_ip(&mut line, "10.200.3.4".parse().unwrap());
        line.push(b' ');
        push_ip(&mut line, "2001:db8::1".parse().unwrap());
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "0 18446744073709551615 10.200.3.4 2001:db8::1"
        );
    }

    #[test]
    fn escapes_quotes_and_control_bytes() {
        let mut line = Vec::new();
        escape_into(&mut line, b"a\"b\\c\x01\xff");
        assert_eq!(String::from_utf8(line).unwrap(), "a\\x22b\\x5Cc\\x01\\xFF");
    }
}
