//! Helpers of the propagation tests.

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::put_hex;

/// Formats `bytes` as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut buf = BytesMut::with_capacity(bytes.len() * 2);
    put_hex(&mut buf, bytes);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The only value of a header that must not repeat: `Err` when it appears more than once.
pub fn single_value<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    Ok(first)
}

/// A header map of `pairs`, in order (a name may repeat).
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}
