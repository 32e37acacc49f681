//! Integration tests over real loopback sockets.

mod support;

mod admin;
mod balancing;
mod cli;
mod forwarding;
mod guards;
mod routing;
mod timeouts;
