//! Talking to the server: one POST per image, retried with exponential back-off and jitter on
//! connection errors, timeouts, 408, 429 and 5xx (a `Retry-After` is honoured), never on other
//! 4xx. Errors are sorted into "this image failed" and "the run cannot go on" (unreachable
//! server, wrong key, wrong model or URL), so a misconfigured run stops at once with one message
//! instead of failing every image.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::request::{error_message, excerpt};

/// An API key: never printed (its `Debug` is `***`), and removed from every server message.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; `None` when it is empty.
    pub fn new(key: String) -> Option<ApiKey> {
        let key = key.trim().to_string();
        (!key.is_empty()).then_some(ApiKey(key))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Why a request gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// This image failed; the others go on.
    Image(String),
    /// Nothing can succeed (unreachable server, rejected key, unknown model): stop the run.
    Fatal(String),
}

/// How a client connects and retries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The full `…/chat/completions` URL.
    pub url: String,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub key: Option<ApiKey>,
    /// Limit for one request, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// Tries after the first.
    pub retries: u32,
    /// The first back-off; doubled each retry, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
}

/// Longest back-off between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest `Retry-After` waited for; a server asking for more (a spent quota) fails the image.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Largest answer read (a caption is a few KB; this stops a misbehaving server).
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// A blocking client for one chat-completions URL, shared by the worker threads.
pub struct Client {
    agent: ureq::Agent,
    options: ClientOptions,
    /// Whether the server has answered once: before that, errors that every request would hit
    /// stop the run; after it, a connection error is a hiccup worth retrying.
    reached: AtomicBool,
}

/// What one try gave.
enum Try {
    Answer(String),
    Retry { reason: String, connect: bool, wait: Option<Duration> },
    Fail(Failure),
}

impl Client {
    /// A client for `options.url` (plain `http://` for local servers, `https://` through rustls
    /// with the bundled root certificates; proxies from `HTTPS_PROXY`/`NO_PROXY`).
    pub fn new(options: ClientOptions) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(options.timeout))
            .timeout_connect(Some(options.timeout.min(Duration::from_secs(15))))
            .user_agent(format!("lorakit/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client { agent, options, reached: AtomicBool::new(false) }
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.options.url
    }

    /// POSTs `body` and returns the answer's text, retrying what may pass.
    pub fn post(&self, body: &serde_json::Value) -> Result<String, Failure> {
        let payload = body.to_string();
        let mut attempt = 0;
        loop {
            let (reason, connect, wait) = match self.try_once(&payload) {
                Try::Answer(text) => return Ok(text),
                Try::Fail(f) => return Err(f),
                Try::Retry { reason, connect, wait } => (reason, connect, wait),
            };
            if attempt >= self.options.retries {
                let tries = match attempt + 1 {
                    1 => "1 try".to_string(),
                    n => format!("{n} tries"),
                };
                return Err(if connect {
                    Failure::Fatal(format!(
                        "{} stopped answering ({reason}, {tries}): is the server still running?",
                        self.url()
                    ))
                } else {
                    Failure::Image(format!("{reason} ({tries}; --retries allows more)"))
                });
            }
            if let Some(w) = wait.filter(|w| *w > MAX_RETRY_AFTER) {
                return Err(Failure::Image(format!(
                    "{reason}; the server asks to wait {}s before retrying (a rate limit or a spent quota): run \
                     again later or lower --concurrency",
                    w.as_secs()
                )));
            }
            std::thread::sleep(wait.unwrap_or_else(|| backoff(self.options.backoff, attempt)));
            attempt += 1;
        }
    }

    fn try_once(&self, payload: &str) -> Try {
        let mut request = self.agent.post(&self.options.url).header("Content-Type", "application/json");
        if let Some(key) = &self.options.key {
            request = request.header("Authorization", format!("Bearer {}", key.0));
        }
        let response = match request.send(payload) {
            Ok(r) => r,
            Err(e) => return self.transport_error(e),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = response.into_body().with_config().limit(MAX_ANSWER_BYTES).read_to_string();
        let text = match text {
            Ok(t) => t,
            Err(ureq::Error::Timeout(_)) => {
                return Try::Retry { reason: self.timeout_reason(), connect: false, wait: None };
            }
            Err(e) => {
                return Try::Retry { reason: format!("reading the answer failed: {e}"), connect: false, wait: None };
            }
        };
        self.reached.store(true, Ordering::Relaxed);
        if (200..300).contains(&status) {
            return Try::Answer(text);
        }
        let message = self.redact(&server_message(&text));
        let reason = format!("HTTP {status}: {message}");
        match status {
            408 | 429 | 500..=599 => Try::Retry { reason, connect: false, wait: retry_after },
            401 | 403 => Try::Fail(Failure::Fatal(format!(
                "{} refused the key ({reason}): check the key in the environment variable --api-key-env names",
                self.url()
            ))),
            404 | 405 => Try::Fail(Failure::Fatal(format!(
                "{} ({reason}): check the --api URL (it ends in /v1 for most servers) and the --api-model name",
                self.url()
            ))),
            _ => {
                let hint = if message.contains("max_completion_tokens") {
                    " (this model wants --max-tokens-field max_completion_tokens)"
                } else {
                    ""
                };
                Try::Fail(Failure::Image(format!("{reason}{hint}")))
            }
        }
    }

    /// Sorts a transport error: could not connect (unreachable, refused, no such host, TLS) or
    /// a hiccup during the exchange (timeout, reset).
    fn transport_error(&self, e: ureq::Error) -> Try {
        use std::io::ErrorKind as K;
        let connect = match &e {
            ureq::Error::Io(io) => matches!(
                io.kind(),
                K::ConnectionRefused | K::AddrNotAvailable | K::NetworkUnreachable | K::HostUnreachable | K::NotFound
            ),
            ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Tls(_) => true,
            ureq::Error::Rustls(_) | ureq::Error::Pem(_) => true,
            ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl => {
                return Try::Fail(Failure::Fatal(format!("{}: {e}: check the --api URL", self.url())));
            }
            _ => false,
        };
        let reason = match &e {
            ureq::Error::Timeout(_) if !connect => self.timeout_reason(),
            _ => format!("cannot reach {}: {}", self.url(), self.redact(&e.to_string())),
        };
        if connect && !self.reached.load(Ordering::Relaxed) {
            // Nothing has answered yet: the URL or the server is wrong, and every image would
            // fail the same way. Say so once, at once.
            return Try::Fail(Failure::Fatal(format!(
                "{reason}: is the server running, and is --api right (e.g. http://127.0.0.1:11434/v1 for Ollama, \
                 http://127.0.0.1:8080/v1 for llama.cpp, http://127.0.0.1:1234/v1 for LM Studio)?"
            )));
        }
        Try::Retry { reason, connect, wait: None }
    }

    fn timeout_reason(&self) -> String {
        format!("no answer within {}s (--timeout)", self.options.timeout.as_secs_f64())
    }

    /// `text` with the key replaced by `***` (servers quote the key they refuse).
    fn redact(&self, text: &str) -> String {
        match &self.options.key {
            Some(key) => text.replace(&key.0, "***"),
            None => text.to_string(),
        }
    }
}

/// What an error answer says: its JSON error message, or its text.
fn server_message(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| error_message(&v));
    let message = message.unwrap_or_else(|| body.to_string());
    if message.trim().is_empty() {
        "(no message)".into()
    } else {
        excerpt(&message, 500)
    }
}

/// Exponential back-off with jitter: `first × 2^attempt`, at most [`MAX_BACKOFF`], times a
/// random factor in [0.5, 1) so that workers that failed together do not retry together.
pub fn backoff(first: Duration, attempt: u32) -> Duration {
    let full = first.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF);
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    full.mul_f64(0.5 + (random >> 11) as f64 / (1u64 << 53) as f64 / 2.0)
}

/// The chat-completions URL for `--api`: a base URL (`http://host:port/v1`, with or without a
/// final `/`) gets `/chat/completions`; a URL that ends in it already is kept.
pub fn endpoint(api: &str) -> Result<String, String> {
    let api = api.trim();
    let rest = api
        .strip_prefix("http://")
        .or_else(|| api.strip_prefix("https://"))
        .ok_or_else(|| format!("--api {api}: give an http:// or https:// URL, e.g. http://127.0.0.1:11434/v1"))?;
    if rest.trim_matches('/').is_empty() {
        return Err(format!("--api {api}: the URL has no host"));
    }
    let base = api.trim_end_matches('/');
    Ok(if base.ends_with("/chat/completions") { base.to_string() } else { format!("{base}/chat/completions") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_base_urls_and_full_paths() {
        assert_eq!(endpoint("http://127.0.0.1:11434/v1").unwrap(), "http://127.0.0.1:11434/v1/chat/completions");
        assert_eq!(endpoint("http://h/v1/").unwrap(), "http://h/v1/chat/completions");
        assert_eq!(
            endpoint("https://api.openai.com/v1/chat/completions").unwrap(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert!(endpoint("127.0.0.1:8080/v1").unwrap_err().contains("http://"));
        assert!(endpoint("http://").is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 0..6 {
            let full = Duration::from_millis(100 << attempt);
            let b = backoff(Duration::from_millis(100), attempt);
            assert!(b >= full / 2 && b < full, "{attempt}: {b:?}");
        }
        assert!(backoff(Duration::from_secs(1), 30) <= MAX_BACKOFF);
    }

    #[test]
    fn keys_never_print() {
        let key = ApiKey::new("sk-secret".into()).unwrap();
        assert_eq!(format!("{key:?}"), "***");
        assert!(ApiKey::new("  ".into()).is_none());
    }
}
