//! Defences against floods: the connection cap, CC defence and request limits.
//!
//! Guard state (CC windows and bans, limitReq windows, open connections) lives in
//! [`Guards`] and [`conn_limit::ConnLimiter`], which the shared state owns, so it
//! survives reloads. Guard settings live in [`GuardSettings`], built into each
//! snapshot, so a reload that changes them applies to the next request. The request
//! path takes one short shard lock per enabled guard and allocates nothing once the
//! tables have grown to their working size.

pub mod cc;
pub mod conn_limit;
pub mod ip_list;
pub mod limit_req;
mod table;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use http::Uri;

use crate::clock;
use crate::config::Config;
use crate::metrics::{Metrics, Reason};
use cc::{Ban, CcSettings, CcState};
use limit_req::{LimitReqSettings, LimitReqState};

/// The reason a guard rejected a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The client IP is on `blackList`.
    Blacklisted,
    /// CC defence banned the client IP.
    Banned,
    /// limitReq: the key used up its window; `retry_after` is the time until it ends.
    RateLimited { retry_after: Duration },
}

/// The guard settings of one snapshot; `None` means the guard is disabled.
#[derive(Debug, Clone, Default)]
pub struct GuardSettings {
    pub cc: Option<CcSettings>,
    pub limit_req: Option<LimitReqSettings>,
}

impl GuardSettings {
    pub fn from_config(config: &Config) -> GuardSettings {
        GuardSettings {
            cc: CcSettings::from_config(&config.cc_defense),
            limit_req: LimitReqSettings::from_config(&config.limit_req),
        }
    }
}

/// The per-client state of CC defence and limitReq.
#[derive(Default)]
pub struct Guards {
    pub cc: CcState,
    pub limit_req: LimitReqState,
}

impl Guards {
    /// Runs CC defence, then limitReq, for one request from `client`.
    ///
    /// `host` is the normalised request host. A request that CC defence rejects is not
    /// counted by limitReq.
    pub fn check(&self, settings: &GuardSettings, client: IpAddr, host: &str, uri: &Uri) -> Result<(), Rejection> {
        if settings.cc.is_none() && settings.limit_req.is_none() {
            return Ok(());
        }
        let now = clock::now_ms();

        if let Some(cc) = &settings.cc {
            self.cc.check(cc, client, now)?;
        }
        if let Some(limit) = &settings.limit_req {
            self.limit_req
                .check(limit, client, host, uri.path(), uri.query(), now)?;
        }
        Ok(())
    }

    /// Returns the IPs banned now, soonest expiry first.
    pub fn bans(&self) -> Vec<Ban> {
        self.cc.bans()
    }

    /// Ends the CC ban of `ip`; returns whether it was banned.
    pub fn unban(&self, ip: IpAddr) -> bool {
        let unbanned = self.cc.unban(ip);
        if unbanned {
            tracing::info!(client = %ip, "CC defence ban lifted by request");
        }
        unbanned
    }
}

/// Guard figures for status reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuardStatus {
    /// Rejected requests and connections by reason label, every reason listed.
    pub rejections: BTreeMap<&'static str, u64>,
    pub bans: Vec<Ban>,
    /// Client IPs tracked by CC defence.
    pub cc_entries: usize,
    /// Keys tracked by limitReq.
    pub limit_req_entries: usize,
    pub open_connections: usize,
    /// limitMaxConn; 0 means no limit.
    pub connection_limit: usize,
    /// Idle keep-alive connections closed to make room for new ones.
    pub idle_closed: u64,
}

/// Collects the guard figures of a running gateway.
pub fn status(guards: &Guards, connections: &conn_limit::ConnLimiter, metrics: &Metrics) -> GuardStatus {
    GuardStatus {
        rejections: metrics
            .rejection_counts()
            .map(|(reason, count)| (Reason::as_str(reason), count))
            .collect(),
        bans: guards.bans(),
        cc_entries: guards.cc.len(),
        limit_req_entries: guards.limit_req.len(),
        open_connections: connections.open(),
        connection_limit: connections.limit(),
        idle_closed: connections.idle_closed(),
    }
}

/// Returns a message for each guard setting that a configuration sets but that has no
/// effect.
pub fn ineffective_settings(config: &Config) -> Vec<String> {
    let mut messages = Vec::new();
    if !config.core.ip_forwardeds.is_empty() && config.core.trusted_proxies.is_empty() {
        messages.push(
            "ipForwardeds is set but trustedProxies is empty, so forwarding headers are ignored \
             and every client is keyed by its TCP peer address; list your proxies in trustedProxies"
                .to_owned(),
        );
    }
    let cc = &config.cc_defense;
    if !cc.enable && (!cc.black_list.is_empty() || !cc.white_list.is_empty()) {
        messages
            .push("[ccDefense] whiteList or blackList is set but enable = false, so neither is enforced".to_owned());
    }
    messages
}

/// Logs a warning for each guard setting that has no effect.
pub fn warn_ineffective(config: &Config) {
    for message in ineffective_settings(config) {
        tracing::warn!("{message}");
    }
}
