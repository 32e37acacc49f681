//! Configuration: the typed form of `gateway.toml` and its validation.
//!
//! The file format is minGateway's (same sections and key spellings) plus the additions
//! listed in the README. Every problem is reported with file, line, column and key, and
//! a file with any problem is rejected whole.

mod error;
mod reader;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Uri};
use ipnet::IpNet;

pub use error::{ConfigError, Diagnostic};
use reader::{Reader, Section};

use crate::balance::Strategy;
use crate::router::HostRule;

/// Default location of the configuration file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "configs/gateway.toml";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this configuration was read from.
    pub file: PathBuf,
    /// The tree that relative paths resolve against (see [`prefix_of`]).
    pub prefix: PathBuf,
    pub core: Core,
    pub cc_defense: CcDefense,
    pub limit_req: LimitReq,
    pub log: Log,
    /// `[proxyInfo.<label>]` sections in file order.
    pub routes: Vec<RouteConfig>,
    pub ssl_base: SslBase,
    /// `[sslCert.<label>]` sections in file order.
    pub certs: Vec<CertConfig>,
    pub admin: Admin,
}

/// `[core]`: listeners, timeouts and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Core {
    /// Maximum open client connections over all listeners; 0 means no limit.
    pub limit_max_conn: usize,
    /// Time allowed to read a request's head and body; `None` means no limit.
    pub read_timeout: Option<Duration>,
    /// Time allowed from the request head being read to the response being written.
    pub write_timeout: Option<Duration>,
    /// Time a keep-alive connection may wait for its next request.
    pub idle_timeout: Option<Duration>,
    pub max_header_bytes: usize,
    /// Maximum request body size; larger bodies get 413.
    pub max_body_bytes: Option<u64>,
    /// Headers that carry the client IP, read only from trusted proxies.
    pub ip_forwardeds: Vec<HeaderName>,
    pub trusted_proxies: Vec<IpNet>,
    pub http_listen: Vec<SocketAddr>,
    pub https_listen: Vec<SocketAddr>,
    pub shutdown_timeout: Duration,
}

/// `[ccDefense]`: per-IP request-rate bans.
#[derive(Debug, Clone, PartialEq)]
pub struct CcDefense {
    pub enable: bool,
    pub window: Duration,
    /// Requests allowed per window; one more bans the IP.
    pub count: u32,
    pub ban: Duration,
    pub white_list: Vec<IpNet>,
    pub black_list: Vec<IpNet>,
    /// Maximum client IPs tracked at once; the oldest are evicted past it.
    pub max_entries: usize,
}

/// The part of the URL that a limitReq key includes besides client IP and host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitReqMode {
    /// Mode 0: the path without the query.
    Path,
    /// Mode 1: the path and the query.
    PathAndQuery,
}

/// `[limitReq]`: per-IP, per-URL request limits.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitReq {
    pub enable: bool,
    pub window: Duration,
    /// Requests allowed per window for one key.
    pub count: u32,
    pub mode: LimitReqMode,
    pub max_entries: usize,
}

/// Log verbosity, from minGateway's `logLevel` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Parses `debug`, `DebugLevel`, `info`, ..., including minGateway's `fatal` and
    /// `panic`, which map to `error`.
    pub fn parse(text: &str) -> Option<LogLevel> {
        let name = text.strip_suffix("Level").unwrap_or(text).to_ascii_lowercase();
        match name.as_str() {
            "trace" => Some(LogLevel::Trace),
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" | "warning" => Some(LogLevel::Warn),
            "error" | "fatal" | "panic" => Some(LogLevel::Error),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Combined,
    Json,
}

/// How often log files rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Hourly,
    Daily,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub level: LogLevel,
    pub write_file: bool,
    pub dir: PathBuf,
    pub access_log: bool,
    pub access_log_format: AccessLogFormat,
    pub rotation: Rotation,
    pub max_files: usize,
}

/// The request property that consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Host,
    Uri,
    Header(HeaderName),
}

/// One upstream URL of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// The URL as written, also the target's identity on the hash ring.
    pub url: String,
    pub authority: Authority,
    /// Path prepended to every request path; empty or starting with `/`, no trailing `/`.
    pub path_prefix: String,
    pub weight: u32,
}

/// `[proxyInfo.<label>]`: hosts and the pool of targets that serves them.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub label: String,
    pub hosts: Vec<HostRule>,
    pub targets: Vec<TargetConfig>,
    pub strategy: Strategy,
    pub hash_key: HashKey,
    /// Failed attempts that mark a target down.
    pub max_fails: u32,
    /// How long a target stays down.
    pub fail_timeout: Duration,
    pub redirect_https: bool,
}

/// Lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `[sslBase]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SslBase {
    pub session_ticket: bool,
    pub min_version: TlsVersion,
    pub http2: bool,
}

/// `[sslCert.<label>]`: one certificate chain and key.
#[derive(Debug, Clone, PartialEq)]
pub struct CertConfig {
    pub label: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ocsp_stapling: bool,
    pub ocsp_local: bool,
    pub ocsp_file: Option<PathBuf>,
    pub default: bool,
}

/// `[admin]`.
#[derive(Clone, PartialEq)]
pub struct Admin {
    pub enable: bool,
    pub listen: SocketAddr,
    /// Bearer token the admin API requires; never logged.
    pub token: Option<String>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("enable", &self.enable)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Returns the tree that relative paths resolve against: the parent of the config
/// file's folder when that folder is named `configs` (the deployed layout), else the
/// config file's folder.
pub fn prefix_of(file: &Path) -> PathBuf {
    let folder = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if folder.file_name().is_some_and(|name| name == "configs") {
        folder
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    } else {
        folder.to_path_buf()
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        Config::parse(file, &source)
    }

    /// Validates configuration text; `file` names it in messages and anchors relative paths.
    pub fn parse(file: &Path, source: &str) -> Result<Config, ConfigError> {
        let mut reader = Reader::new(file, source);
        let document = match toml::de::DeTable::parse(source) {
            Ok(document) => document,
            Err(error) => {
                reader.report_syntax(&error);
                return Err(ConfigError::Invalid(reader.diagnostics));
            }
        };

        let prefix = prefix_of(file);
        let mut root = Section::root(&document);
        let config = read_config(&mut reader, &mut root, file, prefix);
        root.finish(&mut reader);

        if reader.diagnostics.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(reader.diagnostics))
        }
    }

    /// Returns every file the configuration names (certificates, keys, OCSP files).
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for cert in &self.certs {
            files.push(cert.cert_file.clone());
            files.push(cert.key_file.clone());
            if let Some(ocsp) = &cert.ocsp_file {
                files.push(ocsp.clone());
            }
        }
        files
    }
}

fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    (seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn read_config(reader: &mut Reader<'_>, root: &mut Section<'_, '_>, file: &Path, prefix: PathBuf) -> Config {
    let certs = match root.table(reader, "sslCert") {
        Some(mut section) => {
            let certs = read_certs(reader, &mut section, &prefix);
            section.finish(reader);
            certs
        }
        None => Vec::new(),
    };

    let core = {
        let mut section = root.table(reader, "core");
        let core = read_core(reader, section.as_mut(), !certs.is_empty());
        if let Some(section) = section {
            section.finish(reader);
        }
        core
    };

    let cc_defense = {
        let mut section = root.table(reader, "ccDefense");
        let cc = read_cc_defense(reader, section.as_mut());
        if let Some(section) = section {
            section.finish(reader);
        }
        cc
    };

    let limit_req = {
        let mut section = root.table(reader, "limitReq");
        let limit = read_limit_req(reader, section.as_mut());
        if let Some(section) = section {
            section.finish(reader);
        }
        limit
    };

    let log = {
        let mut section = root.table(reader, "log");
        let log = read_log(reader, section.as_mut(), &prefix);
        if let Some(section) = section {
            section.finish(reader);
        }
        log
    };

    let routes = match root.table(reader, "proxyInfo") {
        Some(mut section) => {
            let routes = read_routes(reader, &mut section);
            section.finish(reader);
            routes
        }
        None => Vec::new(),
    };
    if routes.is_empty() {
        reader.report(
            root.span().start..root.span().start,
            None,
            "no routes are configured",
            Some("add a [proxyInfo.<label>] section with host and target keys".into()),
        );
    }

    let ssl_base = {
        let mut section = root.table(reader, "sslBase");
        let base = read_ssl_base(reader, section.as_mut());
        if let Some(section) = section {
            section.finish(reader);
        }
        base
    };

    let admin = {
        let mut section = root.table(reader, "admin");
        let admin = read_admin(reader, section.as_mut());
        if let Some(section) = section {
            section.finish(reader);
        }
        admin
    };

    Config {
        file: file.to_path_buf(),
        prefix,
        core,
        cc_defense,
        limit_req,
        log,
        routes,
        ssl_base,
        certs,
        admin,
    }
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT` or Go's `:PORT` for every IPv4 interface.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
            .map_err(|_| format!("`{text}` has an invalid port"));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("`{text}` is not an address of the form IP:PORT"))
}

fn read_listen(reader: &mut Reader<'_>, section: &mut Section<'_, '_>, key: &'static str) -> Option<Vec<SocketAddr>> {
    let items = section.strings(reader, key)?;
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(items.len());
    for (text, span) in items {
        match parse_listen(&text) {
            Ok(addr) if addrs.contains(&addr) => reader.report(
                span,
                Some(format!("{}.{key}", section.path)),
                format!("address {addr} is listed twice"),
                Some("remove the duplicate".into()),
            ),
            Ok(addr) => addrs.push(addr),
            Err(message) => reader.report(
                span,
                Some(format!("{}.{key}", section.path)),
                message,
                Some("write an IP address and port, such as \"127.0.0.1:8080\", \"[::1]:8080\" or \":8080\"".into()),
            ),
        }
    }
    Some(addrs)
}

fn read_networks(reader: &mut Reader<'_>, section: &mut Section<'_, '_>, key: &'static str) -> Option<Vec<IpNet>> {
    let items = section.strings(reader, key)?;
    let mut networks = Vec::with_capacity(items.len());
    for (text, span) in items {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(network) => networks.push(network.trunc()),
            Err(_) => reader.report(
                span,
                Some(format!("{}.{key}", section.path)),
                format!("`{text}` is neither an IP address nor a CIDR block"),
                Some("write addresses such as \"192.0.2.7\", \"2001:db8::1\" or \"192.0.2.0/24\"".into()),
            ),
        }
    }
    Some(networks)
}

fn read_core(reader: &mut Reader<'_>, section: Option<&mut Section<'_, '_>>, has_certs: bool) -> Core {
    let mut core = Core {
        limit_max_conn: 10_000,
        read_timeout: Some(Duration::from_secs(60)),
        write_timeout: Some(Duration::from_secs(60)),
        idle_timeout: Some(Duration::from_secs(75)),
        max_header_bytes: 1 << 20,
        max_body_bytes: None,
        ip_forwardeds: Vec::new(),
        trusted_proxies: Vec::new(),
        http_listen: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80)],
        https_listen: if has_certs {
            vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 443)]
        } else {
            Vec::new()
        },
        shutdown_timeout: Duration::from_secs(30),
    };
    let Some(section) = section else {
        return core;
    };

    if let Some(n) = section.integer(reader, "limitMaxConn", 0, 10_000_000) {
        core.limit_max_conn = n as usize;
    }
    if let Some(s) = section.seconds(reader, "readTimeout") {
        core.read_timeout = seconds_to_duration(s);
    }
    if let Some(s) = section.seconds(reader, "writeTimeout") {
        core.write_timeout = seconds_to_duration(s);
    }
    if let Some(s) = section.seconds(reader, "idleTimeout") {
        // As in Go's http.Server: an idle timeout of 0 falls back to the read timeout.
        core.idle_timeout = seconds_to_duration(s).or(core.read_timeout);
    }
    if let Some(n) = section.integer(reader, "maxHeaderBytes", 0, 64 << 20) {
        core.max_header_bytes = if n == 0 { 1 << 20 } else { n as usize };
    }
    if let Some(n) = section.integer(reader, "maxBodyBytes", 0, i64::MAX) {
        core.max_body_bytes = (n > 0).then_some(n as u64);
    }
    if let Some(s) = section.seconds(reader, "shutdownTimeout") {
        core.shutdown_timeout = Duration::from_secs_f64(s);
    }
    if let Some(names) = section.strings(reader, "ipForwardeds") {
        for (name, span) in names {
            match HeaderName::try_from(name.as_str()) {
                Ok(header) if !core.ip_forwardeds.contains(&header) => core.ip_forwardeds.push(header),
                Ok(_) => {}
                Err(_) => reader.report(
                    span,
                    Some("core.ipForwardeds".into()),
                    format!("`{name}` is not a valid header name"),
                    Some("use header names such as \"X-Forwarded-For\"".into()),
                ),
            }
        }
    }
    if let Some(networks) = read_networks(reader, section, "trustedProxies") {
        core.trusted_proxies = networks;
    }
    if let Some(addrs) = read_listen(reader, section, "httpListen") {
        core.http_listen = addrs;
    }
    if let Some(addrs) = read_listen(reader, section, "httpsListen") {
        if !addrs.is_empty() && !has_certs {
            reader.report(
                section.value_span("httpsListen").unwrap_or_default(),
                Some("core.httpsListen".into()),
                "HTTPS listeners are configured but no certificate is",
                Some("add an [sslCert.<label>] section, or set httpsListen = []".into()),
            );
        }
        core.https_listen = addrs;
    }
    for addr in &core.https_listen {
        // Port 0 requests a free port from the system, so two such listeners never collide.
        if addr.port() != 0 && core.http_listen.contains(addr) {
            reader.report(
                section.value_span("httpsListen").unwrap_or_default(),
                Some("core.httpsListen".into()),
                format!("address {addr} is used by both httpListen and httpsListen"),
                Some("give each listener its own port".into()),
            );
        }
    }
    let listen_errors = reader
        .diagnostics
        .iter()
        .any(|d| matches!(d.key.as_deref(), Some("core.httpListen" | "core.httpsListen")));
    if core.http_listen.is_empty() && core.https_listen.is_empty() && !listen_errors {
        reader.report(
            section.span(),
            Some("core.httpListen".into()),
            "no listener is configured",
            Some("set httpListen = [\"127.0.0.1:8080\"] or another address".into()),
        );
    }
    core
}

fn read_window_ms(reader: &mut Reader<'_>, section: &mut Section<'_, '_>) -> Option<Duration> {
    section
        .integer(reader, "timeDuration", 1, 86_400_000)
        .map(|ms| Duration::from_millis(ms as u64))
}

fn read_cc_defense(reader: &mut Reader<'_>, section: Option<&mut Section<'_, '_>>) -> CcDefense {
    let mut cc = CcDefense {
        enable: false,
        window: Duration::from_secs(3),
        count: 100,
        ban: Duration::from_secs(3600),
        white_list: Vec::new(),
        black_list: Vec::new(),
        max_entries: 100_000,
    };
    let Some(section) = section else {
        return cc;
    };

    if let Some(enable) = section.bool(reader, "enable") {
        cc.enable = enable;
    }
    if let Some(window) = read_window_ms(reader, section) {
        cc.window = window;
    }
    if let Some(count) = section.integer(reader, "count", 1, 1_000_000) {
        cc.count = count as u32;
    }
    if let Some(seconds) = section.integer(reader, "blackTime", 1, 31_536_000) {
        cc.ban = Duration::from_secs(seconds as u64);
    }

    if let Some(list) = read_networks(reader, section, "whiteList") {
        cc.white_list = list;
    }
    let black = read_networks(reader, section, "blackList");
    let alias = read_networks(reader, section, "IPBlackList");
    cc.black_list = black.into_iter().chain(alias).flatten().collect();

    if let Some(n) = section.integer(reader, "maxEntries", 1, 100_000_000) {
        cc.max_entries = n as usize;
    }
    cc
}

fn read_limit_req(reader: &mut Reader<'_>, section: Option<&mut Section<'_, '_>>) -> LimitReq {
    let mut limit = LimitReq {
        enable: false,
        window: Duration::from_secs(1),
        count: 1,
        mode: LimitReqMode::Path,
        max_entries: 100_000,
    };
    let Some(section) = section else {
        return limit;
    };
    if let Some(enable) = section.bool(reader, "enable") {
        limit.enable = enable;
    }
    if let Some(window) = read_window_ms(reader, section) {
        limit.window = window;
    }
    if let Some(count) = section.integer(reader, "count", 1, 1_000_000) {
        limit.count = count as u32;
    }
    if let Some(mode) = section.integer(reader, "mode", 0, 1) {
        limit.mode = if mode == 0 {
            LimitReqMode::Path
        } else {
            LimitReqMode::PathAndQuery
        };
    }
    if let Some(n) = section.integer(reader, "maxEntries", 1, 100_000_000) {
        limit.max_entries = n as usize;
    }
    limit
}

fn read_log(reader: &mut Reader<'_>, section: Option<&mut Section<'_, '_>>, prefix: &Path) -> Log {
    let mut log = Log {
        level: LogLevel::Info,
        write_file: false,
        dir: prefix.join("logs"),
        access_log: false,
        access_log_format: AccessLogFormat::Combined,
        rotation: Rotation::Hourly,
        max_files: 72,
    };
    let Some(section) = section else {
        return log;
    };
    if let Some((text, span)) = section.string(reader, "logLevel") {
        match LogLevel::parse(&text) {
            Some(level) => log.level = level,
            None => reader.report(
                span,
                Some("log.logLevel".into()),
                format!("unknown log level `{text}`"),
                Some("use one of trace, debug, info, warn, error".into()),
            ),
        }
    }
    if let Some(write) = section.bool(reader, "writeFile") {
        log.write_file = write;
    }
    if let Some((dir, _)) = section.string(reader, "fileDir") {
        if !dir.is_empty() {
            log.dir = prefix.join(dir);
        }
    }
    if let Some(access) = section.bool(reader, "accessLog") {
        log.access_log = access;
    }
    if let Some((text, span)) = section.string(reader, "accessLogFormat") {
        match text.as_str() {
            "combined" => log.access_log_format = AccessLogFormat::Combined,
            "json" => log.access_log_format = AccessLogFormat::Json,
            _ => reader.report(
                span,
                Some("log.accessLogFormat".into()),
                format!("unknown access log format `{text}`"),
                Some("use \"combined\" or \"json\"".into()),
            ),
        }
    }
    if let Some((text, span)) = section.string(reader, "rotation") {
        match text.as_str() {
            "hourly" => log.rotation = Rotation::Hourly,
            "daily" => log.rotation = Rotation::Daily,
            _ => reader.report(
                span,
                Some("log.rotation".into()),
                format!("unknown rotation `{text}`"),
                Some("use \"hourly\" or \"daily\"".into()),
            ),
        }
    }
    if let Some(n) = section.integer(reader, "maxFiles", 1, 100_000) {
        log.max_files = n as usize;
    }
    log
}

/// Parses an upstream URL such as `http://127.0.0.1:8080` or `http://app.internal/api`.
fn parse_target(text: &str) -> Result<(Authority, String), String> {
    let uri: Uri = text.parse().map_err(|_| format!("`{text}` is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{text}` uses https, but upstreams are reached over plain HTTP"
            ));
        }
        _ => return Err(format!("`{text}` is not an http:// URL")),
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| format!("`{text}` has no host"))?
        .clone();
    if authority.as_str().contains('@') {
        return Err(format!("`{text}` contains user information, which is not supported"));
    }
    let port_part = &authority.as_str()[authority.host().len()..];
    let port_ok = port_part.is_empty()
        || port_part
            .strip_prefix(':')
            .is_some_and(|port| port.parse::<u16>().is_ok());
    if !port_ok || authority.host().starts_with(':') {
        return Err(format!("`{text}` has an invalid port"));
    }
    if uri.query().is_some() {
        return Err(format!("`{text}` has a query string, which targets cannot have"));
    }
    let path = uri.path().trim_end_matches('/').to_owned();
    Ok((authority, path))
}

fn read_routes(reader: &mut Reader<'_>, section: &mut Section<'_, '_>) -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut seen_hosts: Vec<(HostRule, String)> = Vec::new();

    for (label, label_span, mut route) in section.subtables(reader) {
        let key = |name: &str| Some(format!("proxyInfo.{label}.{name}"));
        let mut hosts = Vec::new();
        match route.strings(reader, "host") {
            Some(items) if items.is_empty() => reader.report(
                route.value_span("host").unwrap_or_default(),
                key("host"),
                "host list is empty",
                Some("list at least one host name, prefix, suffix or \"default\"".into()),
            ),
            Some(items) => {
                for (text, span) in items {
                    match HostRule::parse(&text) {
                        Ok(rule) => {
                            if let Some((_, other)) = seen_hosts.iter().find(|(seen, _)| *seen == rule) {
                                reader.report(
                                    span,
                                    key("host"),
                                    format!("host `{rule}` is already routed by [proxyInfo.{other}]"),
                                    Some("each host rule may appear in one route only; remove one of them".into()),
                                );
                            } else {
                                seen_hosts.push((rule.clone(), label.clone()));
                                hosts.push(rule);
                            }
                        }
                        Err(message) => reader.report(
                            span,
                            key("host"),
                            message,
                            Some("write a host name, a prefix like \"api.\", a suffix like \".example.com\" or \"default\"".into()),
                        ),
                    }
                }
            }
            None => reader.report(
                label_span.clone(),
                key("host"),
                "missing key `host`",
                Some(format!("add host = \"example.com\" to [proxyInfo.{label}]")),
            ),
        }

        let mut targets = Vec::new();
        match route.strings(reader, "target") {
            Some(items) if items.is_empty() => reader.report(
                route.value_span("target").unwrap_or_default(),
                key("target"),
                "target list is empty",
                Some("add at least one upstream URL, such as target = [\"http://127.0.0.1:8081\"]".into()),
            ),
            Some(items) => {
                for (text, span) in items {
                    // minGateway removes spaces inside target URLs; so does this.
                    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                    match parse_target(&cleaned) {
                        Ok(_) if targets.iter().any(|t: &TargetConfig| t.url == cleaned) => reader.report(
                            span,
                            key("target"),
                            format!("target `{cleaned}` is listed twice"),
                            Some("list each upstream once; use weights to send it more requests".into()),
                        ),
                        Ok((authority, path_prefix)) => targets.push(TargetConfig {
                            url: cleaned,
                            authority,
                            path_prefix,
                            weight: 1,
                        }),
                        Err(message) => reader.report(
                            span,
                            key("target"),
                            message,
                            Some("write upstream URLs such as \"http://127.0.0.1:8081\" or \"http://app.internal:8080/base\"".into()),
                        ),
                    }
                }
            }
            None => reader.report(
                label_span.clone(),
                key("target"),
                "missing key `target`",
                Some(format!(
                    "add target = [\"http://127.0.0.1:8081\"] to [proxyInfo.{label}]"
                )),
            ),
        }

        if let Some(weights) = route.integers(reader, "weights", 1, 1000) {
            if weights.len() != targets.len() {
                reader.report(
                    route.value_span("weights").unwrap_or_default(),
                    key("weights"),
                    format!(
                        "the route has {} target{} but {} weight{}",
                        targets.len(),
                        if targets.len() == 1 { "" } else { "s" },
                        weights.len(),
                        if weights.len() == 1 { "" } else { "s" }
                    ),
                    Some("give one weight per target, in the order of the target list".into()),
                );
            } else {
                for (target, (weight, _)) in targets.iter_mut().zip(weights) {
                    target.weight = weight as u32;
                }
            }
        }

        let mode = route.integer(reader, "obtainMode", i64::MIN, i64::MAX);
        let strategy = match Strategy::from_obtain_mode(mode) {
            Some(strategy) => strategy,
            None => {
                reader.report(
                    route.value_span("obtainMode").unwrap_or_default(),
                    key("obtainMode"),
                    format!("unknown obtainMode {}", mode.unwrap_or_default()),
                    Some("use 1 (random), 2 (round robin) or 3 (consistent hash)".into()),
                );
                Strategy::Random
            }
        };

        let mut hash_key = HashKey::ClientIp;
        if let Some((text, span)) = route.string(reader, "hashKey") {
            let parsed = match text.as_str() {
                "ip" | "client_ip" => Some(HashKey::ClientIp),
                "host" => Some(HashKey::Host),
                "uri" => Some(HashKey::Uri),
                other => other
                    .strip_prefix("header:")
                    .and_then(|name| HeaderName::try_from(name.trim()).ok())
                    .map(HashKey::Header),
            };
            match parsed {
                Some(parsed) => hash_key = parsed,
                None => reader.report(
                    span,
                    key("hashKey"),
                    format!("unknown hashKey `{text}`"),
                    Some("use \"ip\", \"host\", \"uri\" or \"header:<name>\"".into()),
                ),
            }
            if strategy != Strategy::ConsistentHash {
                reader.report(
                    span_of(&route, "hashKey"),
                    key("hashKey"),
                    "hashKey only applies with consistent hashing",
                    Some("set obtainMode = 3, or remove hashKey".into()),
                );
            }
        }

        let max_fails = route.integer(reader, "maxFails", 0, 1000).unwrap_or(1) as u32;
        let fail_timeout = route
            .seconds(reader, "failTimeout")
            .map_or(Duration::from_secs(10), Duration::from_secs_f64);
        let redirect_https = route.bool(reader, "redirectHttps").unwrap_or(false);

        route.finish(reader);
        routes.push(RouteConfig {
            label,
            hosts,
            targets,
            strategy,
            hash_key,
            max_fails,
            fail_timeout,
            redirect_https,
        });
    }
    routes
}

fn span_of(section: &Section<'_, '_>, key: &str) -> Range<usize> {
    section.value_span(key).unwrap_or_else(|| section.span())
}

fn read_ssl_base(reader: &mut Reader<'_>, section: Option<&mut Section<'_, '_>>) -> SslBase {
    let mut base = SslBase {
        session_ticket: true,
        min_version: TlsVersion::Tls12,
        http2: true,
    };
    let Some(section) = section else {
        return base;
    };
    if let Some(tickets) = section.bool(reader, "sessionTicket") {
        base.session_ticket = tickets;
    }
    if let Some((text, span)) = section.string(reader, "minVersion") {
        match text.as_str() {
            "1.2" => base.min_version = TlsVersion::Tls12,
            "1.3" => base.min_version = TlsVersion::Tls13,
            _ => reader.report(
                span,
                Some("sslBase.minVersion".into()),
                format!("unsupported TLS version `{text}`"),
                Some("use \"1.2\" or \"1.3\"".into()),
            ),
        }
    }
    if let Some(http2) = section.bool(reader, "http2") {
        base.http2 = http2;
    }
    base
}

/// Resolves a certificate-related path: relative paths live under `<prefix>/cert/`.
fn cert_path(prefix: &Path, file: &str) -> PathBuf {
    let path = Path::new(file);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        prefix.join("cert").join(path)
    }
}

fn read_certs(reader: &mut Reader<'_>, section: &mut Section<'_, '_>, prefix: &Path) -> Vec<CertConfig> {
    let mut certs = Vec::new();
    for (label, label_span, mut cert) in section.subtables(reader) {
        let key = |name: &str| Some(format!("sslCert.{label}.{name}"));
        let required =
            |cert: &mut Section<'_, '_>, reader: &mut Reader<'_>, name: &'static str| match cert.string(reader, name) {
                Some((file, span)) if file.is_empty() => {
                    reader.report(
                        span,
                        key(name),
                        "file name is empty",
                        Some("name a file under cert/".into()),
                    );
                    None
                }
                Some((file, _)) => Some(cert_path(prefix, &file)),
                None => {
                    reader.report(
                        label_span.clone(),
                        key(name),
                        format!("missing key `{name}`"),
                        Some(format!("add {name} = \"<file>\" to [sslCert.{label}]")),
                    );
                    None
                }
            };
        let cert_file = required(&mut cert, reader, "ssl_certificate");
        let key_file = required(&mut cert, reader, "ssl_certificate_key");
        let ocsp_stapling = cert.bool(reader, "ocsp_stapling").unwrap_or(false);
        let ocsp_local = cert.bool(reader, "ocsp_stapling_local").unwrap_or(false);
        let ocsp_file = cert
            .string(reader, "ocsp_stapling_file")
            .filter(|(file, _)| !file.is_empty())
            .map(|(file, _)| cert_path(prefix, &file));
        if ocsp_stapling && ocsp_local && ocsp_file.is_none() {
            reader.report(
                label_span.clone(),
                key("ocsp_stapling_file"),
                "ocsp_stapling_local is true but no ocsp_stapling_file is named",
                Some("name the DER OCSP response file, or set ocsp_stapling_local = false to fetch it".into()),
            );
        }
        let default = cert.bool(reader, "default").unwrap_or(false);
        cert.finish(reader);

        if let (Some(cert_file), Some(key_file)) = (cert_file, key_file) {
            certs.push(CertConfig {
                label,
                cert_file,
                key_file,
                ocsp_stapling,
                ocsp_local,
                ocsp_file,
                default,
            });
        }
    }
    if certs.iter().filter(|c| c.default).count() > 1 {
        reader.report(
            section.span(),
            Some("sslCert".into()),
            "more than one certificate is marked default = true",
            Some("mark one certificate as the default".into()),
        );
    }
    certs
}

fn read_admin(reader: &mut Reader<'_>, section: Option<&mut Section<'_, '_>>) -> Admin {
    let mut admin = Admin {
        enable: true,
        listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
        token: None,
    };
    let Some(section) = section else {
        return admin;
    };
    if let Some(enable) = section.bool(reader, "enable") {
        admin.enable = enable;
    }
    if let Some((text, span)) = section.string(reader, "listen") {
        match parse_listen(&text) {
            Ok(addr) => admin.listen = addr,
            Err(message) => reader.report(
                span,
                Some("admin.listen".into()),
                message,
                Some("write an IP address and port, such as \"127.0.0.1:9900\"".into()),
            ),
        }
    }
    if let Some((token, _)) = section.string(reader, "token") {
        admin.token = (!token.is_empty()).then_some(token);
    }
    admin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("configs/gateway.toml"), text)
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(error) => error.diagnostics().to_vec(),
        }
    }

    const MINIMAL: &str = r#"
[core]
httpListen = ["127.0.0.1:8080"]

[proxyInfo.app]
host = "app.test"
target = ["http://127.0.0.1:9000"]
"#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.core.http_listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.routes[0].strategy, Strategy::Random);
        assert_eq!(config.admin.listen, "127.0.0.1:9900".parse().unwrap());
        assert_eq!(config.prefix, Path::new("."));
    }

    #[test]
    fn unknown_key_names_line_and_suggestion() {
        let list = errors(&MINIMAL.replace("httpListen", "readTimout = 5\nhttpListen"));
        assert_eq!(list.len(), 1);
        let error = &list[0];
        assert_eq!(error.line, 3);
        assert_eq!(error.key.as_deref(), Some("core.readTimout"));
        assert!(error.help.as_deref().unwrap().contains("readTimeout"), "{error}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let list = errors(&MINIMAL.replace("httpListen", "readTimeout = \"5\"\nhttpListen"));
        assert_eq!(list[0].key.as_deref(), Some("core.readTimeout"));
        assert!(list[0].message.contains("found a string"), "{}", list[0]);
    }

    #[test]
    fn empty_targets_and_bad_urls_are_errors() {
        let list = errors(&MINIMAL.replace(r#"["http://127.0.0.1:9000"]"#, "[]"));
        assert_eq!(list[0].key.as_deref(), Some("proxyInfo.app.target"));
        assert_eq!(list[0].line, 7);

        let list = errors(&MINIMAL.replace("http://127.0.0.1:9000", "127.0.0.1:9000"));
        assert_eq!(list[0].key.as_deref(), Some("proxyInfo.app.target"));
        let list = errors(&MINIMAL.replace("http://127.0.0.1:9000", "http://exa mple.com:x"));
        assert_eq!(list[0].key.as_deref(), Some("proxyInfo.app.target"));
    }

    #[test]
    fn duplicate_hosts_are_errors() {
        let text = format!("{MINIMAL}\n[proxyInfo.other]\nhost = \"APP.test\"\ntarget = [\"http://127.0.0.1:9001\"]\n");
        let list = errors(&text);
        assert_eq!(list[0].key.as_deref(), Some("proxyInfo.other.host"));
        assert!(list[0].message.contains("proxyInfo.app"), "{}", list[0]);
    }

    #[test]
    fn syntax_error_has_position() {
        let list = errors("[core]\nreadTimeout = = 5\n");
        assert_eq!(list[0].line, 2);
        assert!(list[0].message.starts_with("invalid TOML"));
    }

    #[test]
    fn idle_timeout_zero_falls_back_to_read_timeout() {
        let config = parse(&MINIMAL.replace("httpListen", "readTimeout = 7\nidleTimeout = 0\nhttpListen")).unwrap();
        assert_eq!(config.core.idle_timeout, Some(Duration::from_secs(7)));
    }

    #[test]
    fn log_levels_accept_mingateway_names() {
        assert_eq!(LogLevel::parse("DebugLevel"), Some(LogLevel::Debug));
        assert_eq!(LogLevel::parse("warn"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("fatal"), Some(LogLevel::Error));
        assert_eq!(LogLevel::parse("loud"), None);
    }

    #[test]
    fn prefix_is_tree_root_for_configs_folder() {
        assert_eq!(prefix_of(Path::new("configs/gateway.toml")), Path::new("."));
        assert_eq!(
            prefix_of(Path::new("/opt/gw/configs/gateway.toml")),
            Path::new("/opt/gw")
        );
        assert_eq!(
            prefix_of(Path::new("/etc/minigateway/gw.toml")),
            Path::new("/etc/minigateway")
        );
        assert_eq!(prefix_of(Path::new("gw.toml")), Path::new("."));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen(":80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert_eq!(parse_listen("[::1]:8080").unwrap(), "[::1]:8080".parse().unwrap());
        assert!(parse_listen("localhost:80").is_err());
    }

    #[test]
    fn admin_token_is_redacted_in_debug() {
        let config = parse(&format!("{MINIMAL}\n[admin]\ntoken = \"s3cret\"\n")).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
