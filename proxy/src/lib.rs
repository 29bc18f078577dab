//! meshtrace data plane: a transparent L7 proxy that forwards traffic unchanged and traces every
//! HTTP hop.

pub mod admin;
pub mod app;
pub mod await_ready;
pub mod cni;
pub mod config;
pub mod detect;
pub mod export;
pub mod forward;
pub mod init;
pub mod listen;
pub mod meta;
pub mod metrics;
pub mod shutdown;
pub mod span;
pub mod trace;
