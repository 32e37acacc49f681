//! Shared test helpers: real upstreams, clients and gateways on loopback.

pub mod client;
pub mod gateway;
pub mod logs;
pub mod pki;
pub mod ports;
pub mod tls_client;
pub mod upstream;

pub use client::{RawResponse, connect_from, get, h2c_sender, pooled, raw, read_response, send};
pub use gateway::{TestGateway, config, tree};
pub use ports::{free_addr, free_port, wait_listening};
pub use upstream::{ScriptedUpstream, SilentUpstream, Upstream, closed_addr};
