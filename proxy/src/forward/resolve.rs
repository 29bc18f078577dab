//! Name resolution for explicit (forward-proxy) mode, where requests name their destination.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use hickory_resolver::config::ResolverConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use super::error::ForwardError;

/// A shared DNS resolver (system configuration and hosts file, with caching), built when the
/// first name is resolved: a proxy whose requests never name a host (inbound, transparent
/// outbound) never sets one up, nor holds its caches.
#[derive(Clone, Default)]
pub struct Resolver {
    /// Inside, `None` when no resolver could be built: only IP literals resolve.
    inner: Arc<OnceLock<Option<TokioResolver>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("built", &self.inner.get().map(Option::is_some))
            .finish()
    }
}

impl Resolver {
    /// Uses `/etc/resolv.conf` and `/etc/hosts` (read at the first name resolved); without a
    /// usable resolv.conf, only IP literals and the hosts file resolve.
    pub fn from_system() -> Self {
        Resolver::default()
    }

    fn build() -> Option<TokioResolver> {
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
            Ok(resolver) => Some(resolver),
            Err(error) => {
                tracing::error!(%error, "DNS resolver unavailable; only IP addresses resolve");
                None
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
        let Some(resolver) = self.inner.get_or_init(Resolver::build) else {
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
        assert!(
            resolver.inner.get().is_none(),
            "literals need no resolver: none is built"
        );
        let localhost = resolver.resolve("localhost", 81).await.unwrap();
        assert!(localhost
            .iter()
            .any(|addr| addr.ip() == std::net::Ipv4Addr::LOCALHOST));
        assert!(localhost
            .iter()
            .all(|addr| addr.ip().is_loopback() && addr.port() == 81));
        assert!(
            resolver.clone().inner.get().is_some(),
            "built at the first name, shared by the clones"
        );
    }
}
