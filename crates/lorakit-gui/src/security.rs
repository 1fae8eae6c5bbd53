//! The one gate every request passes (spec: gui-peers.md §7).
//!
//! In order:
//! 1. **Host**: only loopback names (`localhost`, `127.0.0.1`, `[::1]`) and the hosts allowed at
//!    start — a page on another site that rebinds its DNS name to 127.0.0.1 still sends its own
//!    name, and is refused (DNS rebinding).
//! 2. **Origin** on anything but GET/HEAD: the browser's `Origin` must name an allowed host (or
//!    `Sec-Fetch-Site: same-origin`), so another site cannot post forms or fetches here (CSRF).
//!    Actions exist only as POST routes; GET never changes anything.
//! 3. **Token**: the random per-start token, from the `lorakit_<port>` cookie (HttpOnly,
//!    SameSite=Strict; named after the port because cookies ignore ports), an
//!    `Authorization: token …` / `Bearer …` header (scripts), or `?token=` once: a GET with it is
//!    redirected to the same URL without it and the cookie set, so the token leaves the address
//!    bar and `<img>` / `EventSource` requests are authorised by the cookie.
//!
//! Every response gets a strict Content-Security-Policy (no inline scripts: captions are user
//! data and are only ever inserted as text), `nosniff`, no referrer, no framing.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng;

use crate::api::error;
use crate::AppState;

/// The Content-Security-Policy of every response.
pub const CSP: &str =
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Host names the server answers to besides its allowed list.
const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// The token and host rules of one server.
#[derive(Debug, Clone)]
pub struct Guard {
    token: String,
    cookie: String,
    allowed_hosts: Vec<String>,
}

/// A fresh random token: 32 bytes as 64 hex digits.
pub fn random_token() -> String {
    let mut rng = rand::rng();
    (0..32).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

impl Guard {
    /// Rules for `token` (at least 16 characters of `[A-Za-z0-9_-]`), the cookie of `port` and
    /// the extra host names in `allow_hosts`.
    pub fn new(token: String, port: u16, allow_hosts: Vec<String>) -> Result<Guard, String> {
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("use at least 16 characters of letters, digits, '-' or '_'".into());
        }
        let allowed_hosts = allow_hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
        Ok(Guard { token, cookie: format!("lorakit_{port}"), allowed_hosts })
    }

    /// The cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.cookie
    }

    /// Whether `host` (a Host header or an Origin's authority, port optional) is one this server
    /// answers to.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        LOOPBACK_HOSTS.contains(&name.as_str()) || self.allowed_hosts.contains(&name)
    }

    fn token_matches(&self, candidate: &str) -> bool {
        // Constant time in the candidate's content.
        let (a, b) = (self.token.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn presented(&self, headers: &HeaderMap) -> bool {
        let from_cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == self.cookie && self.token_matches(value));
        let from_header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("token ").or_else(|| v.strip_prefix("Bearer ")))
            .is_some_and(|t| self.token_matches(t.trim()));
        from_cookie || from_header
    }
}

/// `host:port` → `host` (`[::1]:80` → `[::1]`).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The `token` query parameter and the query without it.
fn split_token(uri: &Uri) -> (Option<String>, Option<String>) {
    let Some(query) = uri.query() else { return (None, None) };
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("token", value)) => token = Some(value.to_string()),
            _ if pair == "token" => {}
            _ => rest.push(pair),
        }
    }
    (token, (!rest.is_empty()).then(|| rest.join("&")))
}

/// The middleware: Host, Origin and token checks, then security headers on the response.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let guard = state.guard();
    let mut response = check(guard, request, next).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn check(guard: &Guard, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !guard.host_allowed(host) {
        return error(
            StatusCode::FORBIDDEN,
            "this host name is not allowed (start lorakit gui with --allow-host NAME to use it)",
        );
    }
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    if !safe {
        let origin_ok = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            Some(origin) => origin
                .split_once("://")
                .is_some_and(|(scheme, authority)| matches!(scheme, "http" | "https") && guard.host_allowed(authority)),
            None => headers.get("sec-fetch-site").is_some_and(|v| v == "same-origin"),
        };
        if !origin_ok {
            return error(StatusCode::FORBIDDEN, "cross-site request refused");
        }
    }
    if guard.presented(headers) {
        return next.run(request).await;
    }
    let (token, rest) = split_token(request.uri());
    match token {
        Some(t) if guard.token_matches(&t) && safe => {
            // Set the cookie and send the browser to the same address without the token.
            let location = match rest {
                Some(q) => format!("{}?{q}", request.uri().path()),
                None => request.uri().path().to_string(),
            };
            let cookie = format!("{}={}; HttpOnly; SameSite=Strict; Path=/", guard.cookie, guard.token);
            Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, location)
                .header(header::SET_COOKIE, cookie)
                .header(header::CACHE_CONTROL, "no-store")
                .body(Body::empty())
                .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "redirect"))
        }
        _ => error(
            StatusCode::UNAUTHORIZED,
            "not signed in: open the address `lorakit gui` printed (it carries the token)",
        ),
    }
}
