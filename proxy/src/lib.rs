//! meshtrace data plane: a transparent L7 proxy that forwards traffic unchanged and traces every
//! HTTP hop.
//!
//! `src/README.md` lists the modules in the order a request meets them.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod await_ready;
pub mod client_io;
pub mod cni;
pub mod config;
pub mod detect;
pub mod export;
pub mod fd_limit;
pub mod forward;
pub mod init;
pub mod listen;
pub mod meta;
pub mod metrics;
pub mod periodic;
pub mod shutdown;
pub mod span;
pub mod trace;
