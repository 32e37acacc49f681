//! Defences against floods: the connection cap, CC defence and request limits.

pub mod conn_limit;
