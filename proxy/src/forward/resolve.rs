//! Name resolution for explicit (forward-proxy) mode, where requests name their destination.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::ResolverConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use super::error::ForwardError;

/// A shared DNS resolver (system configuration and hosts file, with caching).
#[derive(Clone)]
pub struct Resolver {
    /// `None` when no resolver could be built: only IP literals resolve.
    inner: Option<Arc<TokioResolver>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl Resolver {
    /// Uses `/etc/resolv.conf` and `/etc/hosts`; without a usable resolv.conf, only IP literals
    /// and the hosts file resolve.
    pub fn from_system() -> Self {
        let resolver = TokioResolver::builder_tokio()
            .and_then(|builder| builder.build())
            .or_else(|error| {
                tracing::warn!(%error, "no usable system DNS configuration");
                TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioRuntimeProvider::default(),
                )
                .build()
            });
        match resolver {
            Ok(resolver) => Resolver {
                inner: Some(Arc::new(resolver)),
            },
            Err(error) => {
                tracing::error!(%error, "DNS resolver unavailable; only IP addresses resolve");
                Resolver { inner: None }
            }
        }
    }

    /// Resolves `host` (a name, an IPv4 literal or a bracketed IPv6 literal) to its addresses,
    /// in the resolver's order (never empty).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ForwardError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let Some(resolver) = &self.inner else {
            return Err(ForwardError::Dns {
                host: host.to_string(),
                reason: "no DNS resolver".to_string(),
            });
        };
        let lookup = resolver
            .lookup_ip(host)
            .await
            .map_err(|error| ForwardError::Dns {
                host: host.to_string(),
                reason: error.to_string(),
            })?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(ForwardError::Dns {
                host: host.to_string(),
                reason: "no addresses".to_string(),
            });
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_hosts_file() {
        let resolver = Resolver::from_system();
        assert_eq!(
            resolver.resolve("10.0.0.1", 80).await.unwrap(),
            ["10.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(
            resolver.resolve("[::1]", 8080).await.unwrap(),
            ["[::1]:8080".parse().unwrap()]
        );
        let localhost = resolver.resolve("localhost", 81).await.unwrap();
        assert!(localhost
            .iter()
            .any(|addr| addr.ip() == std::net::Ipv4Addr::LOCALHOST));
        assert!(localhost
            .iter()
            .all(|addr| addr.ip().is_loopback() && addr.port() == 81));
    }
}
