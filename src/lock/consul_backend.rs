//! `ConsulBackend`: [`LockBackend`] as an HTTP client of a Consul agent, or of
//! any server of the Consul-compatible subset (every failoverd agent serves one).
//!
//! One HTTP request per trait call, each with a timeout:
//!
//! | call        | request                                                   | answer                 |
//! |-------------|-----------------------------------------------------------|------------------------|
//! | create      | `PUT /v1/session/create` `{Name,TTL,LockDelay,Behavior}`  | `{"ID": ...}`          |
//! | renew       | `PUT /v1/session/renew/<id>`                              | `[{"TTL": "15s", ..}]` |
//! | destroy     | `PUT /v1/session/destroy/<id>`                            | `true`                 |
//! | acquire     | `PUT /v1/kv/<key>?acquire=<id>`, value as body            | `true` / `false`       |
//! | release     | `PUT /v1/kv/<key>?release=<id>`, value as body            | `true` / `false`       |
//! | watch       | `GET /v1/kv/<key>?consistent&index=N&wait=<d>`            | `[{..}]` or 404        |
//!
//! Errors: no connection or no answer in time is `Unavailable`; a 5xx saying
//! `No cluster leader` is `NoLeader`; other 5xx and 429 are `Unavailable`,
//! except the 500s by which Consul reports a request it will never accept
//! (bad TTL, ACL denial, ...), which are `Rejected`; 403 is `Rejected`
//! ("check the Consul token"); other 4xx are `Rejected` with Consul's text; a
//! 404 on renew and a 500 `invalid session` on acquire/release are
//! `SessionNotFound`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use reqwest::StatusCode;
use reqwest::Url;
use serde::Deserialize;
use serde::Serialize;

use super::backend::Behavior;
use super::backend::KeyState;
use super::backend::LockBackend;
use super::backend::LockError;
use super::backend::SessionSpec;
use super::backend::Watched;

/// Where a local Consul agent (or failoverd agent) serves the Consul API.
pub const DEFAULT_CONSUL_URL: &str = "http://127.0.0.1:8500";
/// Timeout of every non-blocking request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of a TCP connect (within the request timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Consul caps `?wait=` at 10 minutes.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// The header carrying the ACL token.
const TOKEN_HEADER: &str = "X-Consul-Token";
/// The header carrying a blocking endpoint's index.
const INDEX_HEADER: &str = "X-Consul-Index";
/// How much of an error body goes into a message.
const MAX_ERROR_TEXT: usize = 300;
/// Texts of Consul 500s that no retry will fix (Consul reports many request
/// errors as 500 from its RPC layer).
const PERMANENT_500: [&str; 4] = [
    "Invalid Session TTL",
    "Invalid Behavior",
    "Missing node registration",
    "missing session",
];

/// A [`LockBackend`] over a Consul agent's HTTP API. Clones share the client
/// and the token.
#[derive(Clone)]
pub struct ConsulBackend {
    http: reqwest::Client,
    base: Url,
    token: Arc<RwLock<Option<String>>>,
    node_name: String,
    timeout: Duration,
}

impl fmt::Debug for ConsulBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.current_token().is_some() { "set" } else { "none" };
        f.debug_struct("ConsulBackend")
            .field("base", &self.base.as_str())
            .field("node_name", &self.node_name)
            .field("token", &token)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ConsulBackend {
    /// A client of the agent at `base_url` (`http://host:port`, optionally with
    /// a path prefix). `node_name` names sessions whose spec has no name.
    pub fn new(base_url: &str, token: Option<String>, node_name: String) -> Result<Self, LockError> {
        let base = Url::parse(base_url).map_err(|e| LockError::Rejected(format!("consul url {base_url:?}: {e}")))?;
        if base.scheme() != "http" {
            return Err(LockError::Rejected(format!(
                "consul url {base_url:?}: only http:// is supported (this build has no TLS client)"
            )));
        }
        if base.cannot_be_a_base() || base.host_str().is_none() {
            return Err(LockError::Rejected(format!("consul url {base_url:?}: not a base URL")));
        }
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        // Like Go's ProxyFromEnvironment: never send loopback traffic to an HTTP proxy.
        if is_loopback(&base) {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| LockError::Rejected(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            token: Arc::new(RwLock::new(normalize_token(token))),
            node_name,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// Replaces the timeout of non-blocking requests (a watch gets its wait on top).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Replaces the ACL token for all later requests of this client and its clones
    /// (for a token file re-read on SIGHUP). An empty token means none.
    pub fn set_token(&self, token: Option<String>) {
        let token = normalize_token(token);
        match self.token.write() {
            Ok(mut guard) => *guard = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
    }

    /// The agent's base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    fn current_token(&self) -> Option<String> {
        match self.token.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `base` + `v1/<path...>` + `key` split at `/`, each segment percent-encoded.
    fn url(&self, path: &[&str], key: &str) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("v1").extend(path);
            if !key.is_empty() {
                segments.extend(key.split('/'));
            }
        }
        url
    }

    /// Sends one request and reads the whole answer within `timeout`.
    async fn send(
        &self,
        what: &str,
        method: Method,
        url: Url,
        timeout: Duration,
        body: Option<Body>,
    ) -> Result<Reply, LockError> {
        let mut req = self.http.request(method, url).timeout(timeout);
        if let Some(token) = self.current_token() {
            let mut value = HeaderValue::from_str(&token)
                .map_err(|_| LockError::Rejected("the Consul token is not a valid HTTP header value".into()))?;
            value.set_sensitive(true);
            req = req.header(TOKEN_HEADER, value);
        }
        match body {
            Some(Body::Json(bytes)) => req = req.header(CONTENT_TYPE, "application/json").body(bytes),
            Some(Body::Raw(bytes)) => req = req.body(bytes),
            None => {}
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                LockError::Unavailable(format!("{what}: {}: no answer within {timeout:?}", self.base))
            } else {
                LockError::Unavailable(format!("{what}: {}: {}", self.base, error_chain(&e)))
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let index = resp
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        Ok(Reply { status, index, body })
    }

    /// A `PUT /v1/kv/<key>?<op>=<session>` with the value; `true` or `false`.
    async fn lock_op(&self, op: &str, key: &str, session: &str, value: &[u8]) -> Result<bool, LockError> {
        let what = format!("{op} of {key} for session {session}");
        let mut url = self.url(&["kv"], key);
        url.query_pairs_mut().append_pair(op, session);
        let reply = self
            .send(&what, Method::PUT, url, self.timeout, Some(Body::Raw(value.to_vec())))
            .await?;
        if reply.status == StatusCode::INTERNAL_SERVER_ERROR
            && reply.text().to_ascii_lowercase().contains("invalid session")
        {
            return Err(LockError::SessionNotFound(session.to_string()));
        }
        reply.check(&what)?;
        parse_bool(&what, &reply.body)
    }
}

impl LockBackend for ConsulBackend {
    async fn create_session(&self, spec: &SessionSpec) -> Result<String, LockError> {
        let what = "session create";
        let name = if spec.name.is_empty() {
            &self.node_name
        } else {
            &spec.name
        };
        let body = CreateBody {
            name,
            ttl: (!spec.ttl.is_zero()).then(|| go_duration(spec.ttl)),
            lock_delay: go_duration(consul_lock_delay(spec.lock_delay)),
            behavior: spec.behavior,
        };
        let body = serde_json::to_vec(&body).map_err(|e| LockError::Rejected(format!("{what}: {e}")))?;
        let url = self.url(&["session", "create"], "");
        let reply = self
            .send(what, Method::PUT, url, self.timeout, Some(Body::Json(body)))
            .await?;
        reply.check(what)?;
        let created: Created = reply.json(what)?;
        if created.id.is_empty() {
            return Err(LockError::Rejected(format!("{what}: the answer has no session ID")));
        }
        Ok(created.id)
    }

    async fn renew_session(&self, id: &str) -> Result<Duration, LockError> {
        let what = format!("renew of session {id}");
        let url = self.url(&["session", "renew", id], "");
        let reply = self.send(&what, Method::PUT, url, self.timeout, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(LockError::SessionNotFound(id.to_string()));
        }
        reply.check(&what)?;
        let sessions: Vec<RenewedSession> = reply.json(&what)?;
        let Some(session) = sessions.into_iter().next() else {
            return Err(LockError::SessionNotFound(id.to_string()));
        };
        parse_go_duration(&session.ttl)
            .map_err(|e| LockError::Rejected(format!("{what}: TTL {:?} in the answer: {e}", session.ttl)))
    }

    async fn destroy_session(&self, id: &str) -> Result<(), LockError> {
        let what = format!("destroy of session {id}");
        let url = self.url(&["session", "destroy", id], "");
        let reply = self.send(&what, Method::PUT, url, self.timeout, None).await?;
        // `true` or `false`: destroy is idempotent, so either is done.
        reply.check(&what)
    }

    async fn acquire(&self, key: &str, session: &str, value: &[u8]) -> Result<bool, LockError> {
        self.lock_op("acquire", key, session, value).await
    }

    async fn release(&self, key: &str, session: &str, value: &[u8]) -> Result<bool, LockError> {
        self.lock_op("release", key, session, value).await
    }

    async fn watch(&self, key: &str, index: u64, wait: Duration) -> Result<Watched, LockError> {
        let what = format!("watch of {key}");
        let wait = wait.min(MAX_WAIT);
        let mut url = self.url(&["kv"], key);
        {
            let mut query = url.query_pairs_mut();
            query.append_key_only("consistent");
            // Consul treats `wait=0` as its 5-minute default: without a wait this
            // is a plain read, answered at once.
            if !wait.is_zero() {
                query
                    .append_pair("index", &index.to_string())
                    .append_pair("wait", &go_duration(wait));
            }
        }
        // The server adds up to wait/16 of jitter to the wait.
        let timeout = wait + wait / 16 + self.timeout;
        let reply = self.send(&what, Method::GET, url, timeout, None).await?;
        if reply.status != StatusCode::NOT_FOUND {
            reply.check(&what)?;
        }
        // Consul's rule: an index of 0 is a bug, use at least 1. An index that
        // went backwards (snapshot restore) is passed on as is: it is the
        // server's current index, so the next watch blocks on the right thing.
        let index = reply
            .index
            .ok_or_else(|| {
                LockError::Rejected(format!(
                    "{what}: the answer ({}) has no {INDEX_HEADER} header: is {} a Consul agent?",
                    reply.status, self.base
                ))
            })?
            .max(1);
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Watched { index, key: None });
        }
        let entries: Vec<KvEntry> = reply.json(&what)?;
        let Some(entry) = entries.into_iter().next() else {
            return Ok(Watched { index, key: None });
        };
        let value = match entry.value.as_deref() {
            None => Vec::new(),
            Some(encoded) => decode_base64(encoded)
                .ok_or_else(|| LockError::Rejected(format!("{what}: the value is not valid base64")))?,
        };
        let key = KeyState {
            session: entry.session.filter(|s| !s.is_empty()),
            lock_index: entry.lock_index,
            modify_index: entry.modify_index,
            value,
        };
        Ok(Watched { index, key: Some(key) })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, KeyState)>, LockError> {
        let what = format!("list of {prefix}");
        let mut url = self.url(&["kv"], prefix);
        url.query_pairs_mut()
            .append_key_only("recurse")
            .append_key_only("consistent");
        let reply = self.send(&what, Method::GET, url, self.timeout, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        reply.check(&what)?;
        let entries: Vec<KvEntry> = reply.json(&what)?;
        entries
            .into_iter()
            .map(|entry| {
                let value = match entry.value.as_deref() {
                    None => Vec::new(),
                    Some(encoded) => decode_base64(encoded)
                        .ok_or_else(|| LockError::Rejected(format!("{what}: a value is not valid base64")))?,
                };
                let state = KeyState {
                    session: entry.session.filter(|s| !s.is_empty()),
                    lock_index: entry.lock_index,
                    modify_index: entry.modify_index,
                    value,
                };
                Ok((entry.key, state))
            })
            .collect()
    }
}

/// Reads an ACL token file: surrounding whitespace (the trailing newline) is
/// trimmed, and an empty file means no token.
pub fn read_token_file(path: impl AsRef<Path>) -> Result<Option<String>, String> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    Ok(normalize_token(Some(text)))
}

fn normalize_token(token: Option<String>) -> Option<String> {
    token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The error and its causes, `: `-separated (reqwest hides the cause in `source`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A request body.
enum Body {
    Json(Vec<u8>),
    Raw(Vec<u8>),
}

/// A whole HTTP answer.
struct Reply {
    status: StatusCode,
    index: Option<u64>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(MAX_ERROR_TEXT) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text.to_string(),
        }
    }

    /// `Ok` for a 2xx; otherwise the error the status and body map to.
    fn check(&self, what: &str) -> Result<(), LockError> {
        if self.status.is_success() {
            return Ok(());
        }
        let text = self.text();
        let status = self.status;
        let denied = text.contains("Permission denied") || text.contains("ACL not found");
        if status == StatusCode::FORBIDDEN || (status.is_server_error() && denied) {
            return Err(LockError::Rejected(format!(
                "{what}: permission denied: check the Consul token ({status}: {text})"
            )));
        }
        if status.is_server_error() && text.contains("No cluster leader") {
            return Err(LockError::NoLeader);
        }
        if status.is_server_error() && PERMANENT_500.iter().any(|p| text.contains(p)) {
            return Err(LockError::Rejected(format!("{what}: {status}: {text}")));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(LockError::Unavailable(format!("{what}: {status}: {text}")));
        }
        Err(LockError::Rejected(format!("{what}: {status}: {text}")))
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, what: &str) -> Result<T, LockError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| LockError::Rejected(format!("{what}: unexpected answer {:?}: {e}", self.text())))
    }
}

fn parse_bool(what: &str, body: &[u8]) -> Result<bool, LockError> {
    match String::from_utf8_lossy(body).trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(LockError::Rejected(format!(
            "{what}: expected true or false, got {other:?}"
        ))),
    }
}

#[derive(Serialize)]
struct CreateBody<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(rename = "LockDelay")]
    lock_delay: String,
    #[serde(rename = "Behavior")]
    behavior: Behavior,
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "ID", default)]
    id: String,
}

#[derive(Deserialize)]
struct RenewedSession {
    #[serde(rename = "TTL", default)]
    ttl: String,
}

#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "Key", default)]
    key: String,
    #[serde(rename = "Session", default)]
    session: Option<String>,
    #[serde(rename = "LockIndex", default)]
    lock_index: u64,
    #[serde(rename = "ModifyIndex", default)]
    modify_index: u64,
    #[serde(rename = "Value", default)]
    value: Option<String>,
}

/// Consul reads a lock-delay below 1000 ns as seconds ("5" means 5 s), so a
/// positive delay under 1 µs is sent as 1 µs.
fn consul_lock_delay(d: Duration) -> Duration {
    if !d.is_zero() && d < Duration::from_micros(1) {
        Duration::from_micros(1)
    } else {
        d
    }
}

/// A duration as Go's `time.ParseDuration` reads it: `10s`, `1.5s`, `0.001s`.
fn go_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos == 0 {
        return format!("{secs}s");
    }
    let frac = format!("{nanos:09}");
    format!("{secs}.{}s", frac.trim_end_matches('0'))
}

/// Parses a Go duration string (`30s`, `1m30s`, `1.5s`, `250ms`, `1h0m0s`);
/// the empty string (a session without TTL) is zero.
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("unknown unit {unit:?}")),
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err("missing number".into());
        }
        let parse = |digits: &str| -> Result<u128, String> {
            if digits.is_empty() {
                Ok(0)
            } else {
                digits.parse::<u128>().map_err(|_| format!("bad number {num:?}"))
            }
        };
        total += parse(whole)? * unit_ns;
        let frac = &frac[..frac.len().min(18)];
        total += parse(frac)? * unit_ns / 10u128.pow(frac.len() as u32);
        rest = tail;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| "too large".to_string())
}

/// Decodes standard base64, padded or not; `None` if it is not base64.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let data = s.trim_end_matches('=').as_bytes();
    if data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | sextet(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
#[path = "consul_backend_tests.rs"]
mod tests;
