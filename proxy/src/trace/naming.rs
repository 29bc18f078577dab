//! Span names: `{METHOD} {templated path}` so tracing UIs group requests by route and the
//! number of distinct names stays bounded.
//!
//! Templating drops the query and replaces every path segment that looks like an identifier
//! with `{id}`: all digits; a UUID; hex of 16+ characters (or 8+ with a digit); a token of
//! 16+ characters mixing letters and digits; anything longer than 48 characters. The templated
//! path is cut to [`MAX_PATH_LEN`] bytes at a segment boundary and marked with `/...`.

use http::Method;

/// Longest templated path kept in a name.
pub const MAX_PATH_LEN: usize = 128;
/// Longest raw path kept in a name (`path` naming).
pub const MAX_RAW_PATH_LEN: usize = 256;
const ID: &str = "{id}";
const TRUNCATED: &str = "/...";

/// How spans are named (`MESHTRACE_SPAN_NAME`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpanNaming {
    /// `{METHOD} {templated path}`: identifiers replaced by `{id}`, query dropped.
    #[default]
    Template,
    /// `{METHOD}` only, as the OpenTelemetry HTTP conventions name spans without a route.
    Method,
    /// `{METHOD} {path}`: the raw path, query dropped (cut at 256 bytes).
    Path,
}

/// The method as it appears in names: known methods as-is, others `HTTP` (per OpenTelemetry).
pub fn method_name(method: &Method) -> &'static str {
    known_method(method).unwrap_or("HTTP")
}

/// The method if it is one of the standard ones (bounded cardinality).
pub fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

/// The span name for a request. `path` is the URI path (no query).
pub fn span_name(naming: SpanNaming, method: &Method, path: &str) -> String {
    let mut name = String::with_capacity(method.as_str().len() + 1 + path.len().min(MAX_PATH_LEN));
    push_span_name(&mut name, naming, method, path);
    name
}

/// Appends the span name for a request to `out` (see [`span_name`]).
pub fn push_span_name(out: &mut String, naming: SpanNaming, method: &Method, path: &str) {
    let method = method_name(method);
    let path = if path.is_empty() { "/" } else { path };
    out.push_str(method);
    match naming {
        SpanNaming::Method => {}
        SpanNaming::Path => {
            out.push(' ');
            out.push_str(truncate_at_char(path, MAX_RAW_PATH_LEN));
        }
        SpanNaming::Template => {
            out.push(' ');
            push_template(out, path);
        }
    }
}

/// Appends the templated `path` to `out`.
pub fn push_template(out: &mut String, path: &str) {
    let start = out.len();
    let end = path
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    let path = path.get(..end).unwrap_or(path);
    let mut segments = path.split('/');
    // A path starts with '/', so the first segment is empty; an odd one is kept as one segment.
    if let Some(first) = segments.next() {
        if !first.is_empty() {
            push_segment(out, first);
        }
    }
    for segment in segments {
        let before = out.len();
        out.push('/');
        push_segment(out, segment);
        if out.len() - start > MAX_PATH_LEN {
            out.truncate(before);
            out.push_str(TRUNCATED);
            return;
        }
    }
    if out.len() == start {
        out.push('/');
    }
}

fn push_segment(out: &mut String, segment: &str) {
    if looks_like_id(segment) {
        out.push_str(ID);
    } else {
        out.push_str(segment);
    }
}

/// Whether a path segment is an identifier rather than part of a route.
pub fn looks_like_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    if bytes.len() > 48 {
        return true;
    }
    // One pass over the (short) segment.
    let (mut digits, mut letters, mut hex, mut token) = (0usize, 0usize, true, true);
    for &c in bytes {
        if c.is_ascii_digit() {
            digits += 1;
        } else if c.is_ascii_alphabetic() {
            letters += 1;
            hex &= c.is_ascii_hexdigit();
        } else {
            hex = false;
            token &= matches!(c, b'-' | b'_' | b'.' | b'~' | b'=');
        }
    }
    if digits == bytes.len() {
        return true;
    }
    if is_uuid(bytes) {
        return true;
    }
    if hex && (bytes.len() >= 16 || (bytes.len() >= 8 && digits > 0)) {
        return true;
    }
    token && bytes.len() >= 16 && digits > 0 && letters > 0
}

fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    /// The rules as first written (several passes), to check the one-pass version against.
    fn reference_looks_like_id(segment: &str) -> bool {
        let bytes = segment.as_bytes();
        if bytes.is_empty() {
            return false;
        }
        if bytes.len() > 48 {
            return true;
        }
        let digits = bytes.iter().filter(|c| c.is_ascii_digit()).count();
        if digits == bytes.len() || is_uuid(bytes) {
            return true;
        }
        if bytes.iter().all(u8::is_ascii_hexdigit)
            && (bytes.len() >= 16 || (bytes.len() >= 8 && digits > 0))
        {
            return true;
        }
        let token_chars = bytes
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'='));
        let letters = bytes.iter().filter(|c| c.is_ascii_alphabetic()).count();
        token_chars && bytes.len() >= 16 && digits > 0 && letters > 0
    }

    #[test]
    fn one_pass_rules_match_the_reference() {
        const ALPHABET: &[u8] = b"0123456789abcdefXYZ-_.~=%@";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 52) as usize;
            let segment: String = (0..len)
                .map(|i| {
                    let pick = (state >> (i % 50)) as usize ^ i.wrapping_mul(31);
                    char::from(ALPHABET[pick % ALPHABET.len()])
                })
                .collect();
            assert_eq!(
                looks_like_id(&segment),
                reference_looks_like_id(&segment),
                "{segment}"
            );
        }
        for uuid in [
            "550e8400-e29b-41d4-a716-446655440000",
            "deadbeef",
            "abc123def4567890",
        ] {
            assert_eq!(looks_like_id(uuid), reference_looks_like_id(uuid));
        }
    }

    use super::*;

    fn template(path: &str) -> String {
        span_name(SpanNaming::Template, &Method::GET, path)
    }

    #[test]
    fn keeps_routes() {
        assert_eq!(template("/"), "GET /");
        assert_eq!(template(""), "GET /");
        assert_eq!(template("/api/v1/users"), "GET /api/v1/users");
        assert_eq!(template("/api/v1/users/"), "GET /api/v1/users/");
        assert_eq!(template("/healthz"), "GET /healthz");
        assert_eq!(template("/static/app.min.js"), "GET /static/app.min.js");
        assert_eq!(
            template("/user-profile/settings"),
            "GET /user-profile/settings"
        );
        assert_eq!(template("/pkg.Service/Method"), "GET /pkg.Service/Method");
        assert_eq!(
            template("/decade/facade"),
            "GET /decade/facade",
            "hex words without digits"
        );
    }

    #[test]
    fn replaces_identifiers() {
        assert_eq!(template("/users/123"), "GET /users/{id}");
        assert_eq!(
            template("/users/0/orders/98765"),
            "GET /users/{id}/orders/{id}"
        );
        assert_eq!(
            template("/items/550e8400-e29b-41d4-a716-446655440000/edit"),
            "GET /items/{id}/edit"
        );
        assert_eq!(
            template("/items/550E8400-E29B-41D4-A716-446655440000"),
            "GET /items/{id}"
        );
        assert_eq!(
            template("/commit/0af7651916cd43dd8448eb211c80319c"),
            "GET /commit/{id}"
        );
        assert_eq!(template("/blob/deadbeef12"), "GET /blob/{id}");
        assert_eq!(template("/obj/507f1f77bcf86cd799439011"), "GET /obj/{id}");
        assert_eq!(
            template("/t/AbC9xYz2QwErTy7u"),
            "GET /t/{id}",
            "random token"
        );
        assert_eq!(template("/t/dGhpcyBpcyBhIHRva2Vu3-_x"), "GET /t/{id}");
        assert_eq!(
            template(&format!("/long/{}", "a".repeat(49))),
            "GET /long/{id}"
        );
    }

    #[test]
    fn drops_query_and_fragment() {
        assert_eq!(template("/search?q=secret&token=abc"), "GET /search");
        assert_eq!(template("/a/1#frag"), "GET /a/{id}");
        let name = span_name(SpanNaming::Path, &Method::GET, "/a/1");
        assert_eq!(name, "GET /a/1");
    }

    #[test]
    fn bounded_length() {
        let path: String = (0..100)
            .map(|i| format!("/seg{}x", "ab".repeat(i % 7)))
            .collect();
        let name = template(&path);
        assert!(
            name.len() <= "GET ".len() + MAX_PATH_LEN + TRUNCATED.len(),
            "{name}"
        );
        assert!(name.ends_with("/..."));
        assert!(name.starts_with("GET /segx/segabx"));
        // Many ids still bounded.
        let ids: String = (0..1000).map(|i| format!("/{i}")).collect();
        assert!(template(&ids).len() <= 4 + MAX_PATH_LEN + TRUNCATED.len());
        // Raw path naming is also bounded, on a char boundary.
        let raw = format!("/{}", "é".repeat(300));
        let name = span_name(SpanNaming::Path, &Method::GET, &raw);
        assert!(name.len() <= 4 + MAX_RAW_PATH_LEN);
    }

    #[test]
    fn naming_modes_and_methods() {
        assert_eq!(
            span_name(SpanNaming::Method, &Method::POST, "/users/1"),
            "POST"
        );
        assert_eq!(
            span_name(SpanNaming::Path, &Method::PUT, "/users/1"),
            "PUT /users/1"
        );
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(span_name(SpanNaming::Method, &custom, "/"), "HTTP");
        assert_eq!(
            span_name(SpanNaming::Template, &custom, "/x/1"),
            "HTTP /x/{id}"
        );
    }

    #[test]
    fn odd_paths() {
        assert_eq!(template("*"), "GET *");
        assert_eq!(template("//a//1"), "GET //a//{id}");
    }
}
