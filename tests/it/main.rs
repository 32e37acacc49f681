//! Integration tests over real loopback sockets.

mod support;

mod admin;
mod balancing;
mod cli;
mod forwarding;
mod guards;
mod logs;
mod ocsp;
mod reload;
mod routing;
mod timeouts;
mod tls;
mod upstream_framing;
