//! Sample services, the local mesh demo and `meshtrace-viewer`, the built-in trace UI.

pub mod demo;
pub mod http_server;
pub mod services;
pub mod viewer;
