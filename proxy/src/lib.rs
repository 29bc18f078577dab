//! meshtrace data plane: a transparent L7 proxy that forwards traffic unchanged and traces every
//! HTTP hop.

pub mod admin;
pub mod admission;
pub mod app;
pub mod client_io;
pub mod config;
pub mod detect;
pub mod export;
pub mod fd_limit;
pub mod forward;
pub mod init;
pub mod listen;
pub mod meta;
pub mod metrics;
pub mod shutdown;
pub mod span;
pub mod trace;
