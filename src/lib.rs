//! minigateway: an HTTP/HTTPS gateway with host routing, load balancing, flood
//! defences and live reload.
//!
//! The request path reads one immutable [`snapshot::Snapshot`] per request from an
//! `ArcSwap` and never takes a lock that a reload takes. State that must survive a
//! reload lives in [`registry::Registry`] and [`state::State`].

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod connection;
pub mod exposition;
pub mod gateway;
pub mod guard;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod router;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use gateway::Gateway;
