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

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use serde::Serialize;
use time::OffsetDateTime;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::config::{AccessLogFormat, Log};
use crate::logging::rolling_appender;

/// Maximum lines in the access log queue; new lines are dropped past it.
const QUEUE_LINES: usize = 16_384;

/// Bytes the writer thread gathers before a write. It flushes after draining the queue,
/// so a burst of lines costs one system call instead of one per line.
const WRITE_BUFFER: usize = 64 * 1024;

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

/// Writes a header value between double quotes with `"` and `\` escaped, and `-` when
/// absent, as nginx does.
fn write_quoted(line: &mut Vec<u8>, value: Option<&[u8]>) {
    line.push(b'"');
    match value {
        None => line.push(b'-'),
        Some(bytes) => {
            for &byte in bytes {
                match byte {
                    b'"' | b'\\' => {
                        let _ = write!(line, "\\x{byte:02X}");
                    }
                    0x20..=0x7e => line.push(byte),
                    _ => {
                        let _ = write!(line, "\\x{byte:02X}");
                    }
                }
            }
        }
    }
    line.push(b'"');
}

impl Record {
    /// Formats the record as one combined-format line, newline included.
    pub fn combined(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(256);
        let time = OffsetDateTime::from(self.time);
        let _ = write!(
            line,
            "{} - - [{:02}/{}/{}:{:02}:{:02}:{:02} +0000] ",
            self.client,
            time.day(),
            MONTHS[usize::from(u8::from(time.month())) - 1],
            time.year(),
            time.hour(),
            time.minute(),
            time.second()
        );

        let request = format!(
            "{} {} {}",
            self.method,
            request_target(&self.uri),
            version_text(self.version)
        );
        write_quoted(&mut line, Some(request.as_bytes()));
        let _ = write!(line, " {} {} ", self.status, self.bytes_sent);

        write_quoted(&mut line, self.referer.as_ref().map(HeaderValue::as_bytes));
        line.push(b' ');
        write_quoted(&mut line, self.user_agent.as_ref().map(HeaderValue::as_bytes));
        line.push(b' ');
        write_quoted(&mut line, self.upstream.as_deref().map(str::as_bytes));

        match self.upstream_status {
            Some(status) => {
                let _ = write!(line, " {status}");
            }
            None => line.extend_from_slice(b" -"),
        }
        let _ = writeln!(line, " {:.3}", self.duration.as_secs_f64());
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
    writer: NonBlocking,
    dropped: ErrorCounter,
    format: AccessLogFormat,
    /// The settings this log was opened with, to tell whether a reload changes them.
    settings: Log,
    _guard: WorkerGuard,
}

impl AccessLog {
    /// Opens the access log files that `settings` describe.
    pub fn open(settings: &Log) -> Result<AccessLog, String> {
        let appender = rolling_appender(&settings.dir, "access", settings)?;
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUE_LINES)
            .thread_name("access-log")
            .finish(std::io::BufWriter::with_capacity(WRITE_BUFFER, appender));
        Ok(AccessLog {
            dropped: writer.error_counter(),
            writer,
            format: settings.access_log_format,
            settings: settings.clone(),
            _guard: guard,
        })
    }

    /// Returns whether this log was opened with the file settings in `settings`.
    pub fn matches(&self, settings: &Log) -> bool {
        self.settings.dir == settings.dir
            && self.settings.rotation == settings.rotation
            && self.settings.max_files == settings.max_files
            && self.settings.access_log_format == settings.access_log_format
    }

    /// Queues one line. The queue is lossy (`try_send`), so this never waits for disk I/O.
    pub fn write(&self, record: &Record) {
        let line = match self.format {
            AccessLogFormat::Combined => record.combined(),
            AccessLogFormat::Json => record.json(),
        };
        let _ = self.writer.clone().write_all(&line);
    }

    /// Returns the lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.dropped_lines() as u64
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
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
             \"curl/8.5.0 \\x22x\\x22\" \"127.0.0.1:8081\" 200 0.002\n"
        );
    }

    #[test]
    fn combined_line_without_upstream() {
        let mut record = record();
        record.upstream = None;
        record.upstream_status = None;
        let line = String::from_utf8(record.combined()).unwrap();
        assert!(line.ends_with("\"-\" - 0.002\n"), "{line}");
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
