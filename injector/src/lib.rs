//! `meshtrace-injector`: the Kubernetes mutating admission webhook that adds the meshtrace proxy
//! to pods.
//!
//! The decision ([`review`]) and the patch ([`patch`]) are pure functions of the pod, its
//! namespace's annotations and the [`config`]; the HTTPS server ([`server`]), the certificates
//! ([`certs`]) and the Kubernetes API access ([`namespaces`]) are thin shells around them.

#![forbid(unsafe_code)]

pub mod certs;
pub mod config;
pub mod metrics;
pub mod namespaces;
pub mod patch;
pub mod pod_security;
pub mod review;
pub mod server;
