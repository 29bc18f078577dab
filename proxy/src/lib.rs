//! meshtrace data plane: a transparent L7 proxy that forwards traffic unchanged and traces every
//! HTTP hop.

pub mod export;
pub mod init;
pub mod meta;
pub mod span;
pub mod trace;
