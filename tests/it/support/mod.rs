//! Shared test helpers: real upstreams, clients and gateways on loopback.

pub mod client;
pub mod gateway;
pub mod pki;
pub mod tls_client;
pub mod upstream;

pub use client::{get, pooled, raw, read_response};
pub use gateway::{TestGateway, config, tree};
pub use upstream::{SilentUpstream, Upstream, closed_addr};
