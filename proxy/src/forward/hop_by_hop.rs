//! Hop-by-hop header fields (RFC 9110 §7.6.1): what a proxy must not forward, and the upgrade
//! handshake it keeps because it bridges the upgraded connection itself.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::meta::connection_options;
pub use crate::meta::is_upgrade;

/// Removes the hop-by-hop fields of RFC 9110 §7.6.1: those named by `Connection`, then
/// `Connection`, `Proxy-Connection`, `Keep-Alive`, `TE` (except `trailers`, which the proxy
/// honours end to end), `Transfer-Encoding` and `Upgrade`. With `keep_upgrade`, the upgrade
/// handshake (`Connection: upgrade` and `Upgrade`) is forwarded, since the proxy bridges it.
/// The fields that stay keep their order.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names is cheaper than the lookups
    // below.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = connection_options(headers)
        .filter(|option| !(keep_upgrade && option.eq_ignore_ascii_case("upgrade")))
        .filter_map(|option| HeaderName::from_bytes(option.as_bytes()).ok())
        .collect();
    let has_connection = headers.contains_key(header::CONNECTION);
    let only_upgrade =
        keep_upgrade && named.is_empty() && headers.get_all(header::CONNECTION).iter().count() == 1;
    let keep_te = keep_te(headers);
    remove_in_order(headers, |name| {
        if *name == header::TE {
            !keep_te
        } else if *name == header::CONNECTION || *name == header::UPGRADE {
            !keep_upgrade
        } else {
            *name == header::TRANSFER_ENCODING
                || name == "proxy-connection"
                || name == "keep-alive"
                || named.contains(name)
        }
    });
    if has_connection && keep_upgrade && !only_upgrade {
        // Replaces the values in place: the field keeps its position.
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes every field whose name `remove` picks, keeping the others in their order.
/// (`HeaderMap::remove` moves the last field into the removed one's place.)
fn remove_in_order(headers: &mut HeaderMap, remove: impl Fn(&HeaderName) -> bool) {
    let old = std::mem::take(headers);
    headers.reserve(old.len());
    let mut current: Option<HeaderName> = None;
    for (name, value) in old {
        // `None`: another value of the previous name.
        if let Some(name) = name {
            current = (!remove(&name)).then_some(name);
        }
        if let Some(name) = &current {
            headers.append(name.clone(), value);
        }
    }
}

/// The fields `strip_hop_by_hop` may remove without being named by `Connection`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// `TE: trailers` is kept: the proxy forwards trailers, and HTTP/2 (gRPC) requires it.
fn keep_te(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TE).iter();
    matches!(
        (values.next(), values.next()),
        (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"trailers")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::propagation::test_support::header_map as headers;

    fn names(map: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = map.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Hop, close"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
            ("trailer", "x-checksum"),
        ]);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(names(&map), ["trailer", "x-end-to-end"]);
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_removed() {
        for (name, value) in [
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("connection", "close"),
        ] {
            let mut map = headers(&[(name, value), ("x-end-to-end", "kept")]);
            strip_hop_by_hop(&mut map, false);
            assert_eq!(names(&map), ["x-end-to-end"], "{name}");
        }
        let end_to_end = [("host", "a"), ("accept", "*/*"), ("x-keep-alive", "1")];
        let mut map = headers(&end_to_end);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(names(&map), ["accept", "host", "x-keep-alive"]);
    }

    #[test]
    fn the_fields_that_stay_keep_their_order() {
        let mut map = headers(&[
            ("x-first", "1"),
            ("connection", "keep-alive, x-hop"),
            ("vary", "a"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "h"),
            ("vary", "b"),
            ("cache-control", "no-store"),
            ("content-length", "19"),
        ]);
        strip_hop_by_hop(&mut map, false);
        let kept: Vec<(&str, &str)> = map
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            kept,
            [
                ("x-first", "1"),
                ("vary", "a"),
                ("vary", "b"),
                ("cache-control", "no-store"),
                ("content-length", "19"),
            ]
        );
    }

    #[test]
    fn te_trailers_survives() {
        let mut map = headers(&[("te", "trailers"), ("connection", "TE")]);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(map["te"], "trailers");
        assert!(!map.contains_key("connection"));
    }

    #[test]
    fn upgrades_keep_their_handshake() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(&map));
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map["connection"], "Upgrade");
        assert_eq!(map["upgrade"], "websocket");

        let mut map = headers(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map["connection"], "upgrade");
        assert!(!map.contains_key("keep-alive"));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }
}
