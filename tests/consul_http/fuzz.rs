//! Seeded random requests for the Consul-compatible API: real route prefixes
//! with random segments, escapes and unicode; real parameter names with junk
//! values; random bodies; and requests that must be refused.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use reqwest::Method;
use serde_json::json;
use tokio::task::JoinSet;

use super::Consul;
use super::ANSWER_TIMEOUT;
use super::MAX_VALUE;

/// Route prefixes of the Consul API with the method each is meant for (KV
/// listed thrice: it is most of the surface).
pub const FUZZ_ROUTES: [(&str, &str); 13] = [
    ("/v1/session/create", "PUT"),
    ("/v1/session/destroy/", "PUT"),
    ("/v1/session/renew/", "PUT"),
    ("/v1/session/info/", "GET"),
    ("/v1/session/list", "GET"),
    ("/v1/session/node/", "GET"),
    ("/v1/kv/", "GET"),
    ("/v1/kv/", "PUT"),
    ("/v1/kv/", "DELETE"),
    ("/v1/status/leader", "GET"),
    ("/v1/status/peers", "GET"),
    ("/v1/agent/self", "GET"),
    ("/v1/kv/", "PUT"),
];
/// Near misses of the routes.
pub const FUZZ_NEAR_MISSES: [&str; 7] = [
    "/v1/session/",
    "/v1/kv",
    "/v1/",
    "/",
    "/v2/kv/",
    "/v1/kvx/",
    "/v1/session/list/",
];
/// The query parameters the API reads.
pub const FUZZ_PARAMS: [&str; 17] = [
    "index",
    "wait",
    "stale",
    "consistent",
    "leader",
    "token",
    "recurse",
    "raw",
    "keys",
    "separator",
    "seperator",
    "cas",
    "flags",
    "acquire",
    "release",
    "dc",
    "ns",
];
/// Statuses the API may answer with.
pub const FUZZ_STATUSES: [u16; 7] = [200, 400, 403, 404, 405, 413, 500];
/// At most this many requests in all.
pub const FUZZ_REQUESTS: usize = 1500;
/// At most this long sending them.
pub const FUZZ_BUDGET: Duration = Duration::from_secs(60);
/// Requests in flight at once.
pub const FUZZ_PARALLEL: usize = 8;

/// One generated request.
#[derive(Clone)]
pub struct FuzzRequest {
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for FuzzRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head: Vec<u8> = self.body.iter().take(48).copied().collect();
        write!(
            f,
            "{} {} (body {} bytes: {:?})",
            self.method,
            self.path.chars().take(200).collect::<String>(),
            self.body.len(),
            String::from_utf8_lossy(&head)
        )
    }
}

impl FuzzRequest {
    /// Whether the server may legitimately hold it until a timeout (a blocking read).
    pub fn may_block(&self) -> bool {
        (self.method == Method::GET || self.method == Method::HEAD) && self.path.contains("index")
    }

    /// Whether the transport may fail instead of delivering the answer: with a
    /// large body the server may answer (413, or any answer of a handler that
    /// reads no body) before reading it all and close the connection, and the
    /// client can then see a reset while still sending.
    pub fn may_be_cut_off(&self, error: &str) -> bool {
        self.body.len() > 64 * 1024 && !error.starts_with("timeout")
    }
}

/// Random requests from a seeded generator; `sessions` are real ids seen so far.
pub struct Fuzzer {
    pub rng: StdRng,
    pub sessions: Vec<String>,
}

impl Fuzzer {
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items.choose(&mut self.rng).expect("non-empty").clone()
    }

    fn uuid(&mut self) -> String {
        if !self.sessions.is_empty() && self.rng.gen_bool(0.5) {
            let n = self.rng.gen_range(0..self.sessions.len());
            return self.sessions[n].clone();
        }
        uuid::Uuid::from_u128(self.rng.gen()).to_string()
    }

    /// A path segment (or query value): ids, escapes, unicode, junk.
    fn junk(&mut self) -> String {
        match self.rng.gen_range(0..13) {
            0 | 1 => self.uuid(),
            2 => {
                let mut id = self.uuid();
                let cut = self.rng.gen_range(0..id.len());
                id.truncate(cut);
                id.push(self.pick(&['g', 'Z', '-', '}', '{']));
                id
            }
            3 => {
                let escapes = [
                    "%00", "%zz", "%2F", "%ff", "%C3%A9", "%e2%82", "%25", "%", "%2", "%0A", "%20",
                ];
                (0..self.rng.gen_range(1..4)).map(|_| self.pick(&escapes)).collect()
            }
            4 => self
                .pick(&[
                    "é",
                    "日本語",
                    "🦀",
                    "\u{202e}rtl",
                    "ｆｕｌｌ",
                    "\u{0}",
                    "a b",
                    "\t",
                    "Ω≈ç√",
                ])
                .to_string(),
            5 => self.pick(&["..", ".", "", "//", "./..", "%2e%2e"]).to_string(),
            6 => "a".repeat(self.rng.gen_range(100..4000)),
            7 => (0..self.rng.gen_range(1..12))
                .map(|_| char::from(self.rng.gen_range(b'a'..=b'z')))
                .collect(),
            8 => self
                .pick(&[
                    "0",
                    "1",
                    "42",
                    "18446744073709551615",
                    "18446744073709551616",
                    "-1",
                    "1e9",
                ])
                .to_string(),
            9 => self
                .pick(&[";", ",", "@", "!", "$", "'", "(", ")", "*", "+", "=", ":", "~", "&"])
                .to_string(),
            10 => self
                .pick(&["node1", "node2", "node3", "seq", "service/near/leader"])
                .to_string(),
            11 => self
                .pick(&[
                    "10ms",
                    "1s",
                    "5m",
                    "-1s",
                    "1x",
                    "99999999999h",
                    "1.5s",
                    "0",
                    "true",
                    "null",
                ])
                .to_string(),
            _ => String::new(),
        }
    }

    /// A path segment, mostly a plausible one.
    fn segment(&mut self) -> String {
        if self.rng.gen_bool(0.5) {
            return self.junk();
        }
        match self.rng.gen_range(0..3) {
            0 => self.uuid(),
            1 => self.pick(&["node1", "node2", "node3"]).to_string(),
            _ => format!("fuzz/{}", self.rng.gen_range(0..20)),
        }
    }

    /// A path under `prefix`.
    fn path(&mut self, prefix: &str) -> String {
        let mut path = prefix.to_string();
        // Mostly the number of segments the route takes; sometimes more or fewer.
        let segments = match path.as_str() {
            p if p.ends_with('/') && self.rng.gen_bool(0.8) => 1,
            p if !p.ends_with('/') && self.rng.gen_bool(0.8) => 0,
            _ => self.rng.gen_range(0..4),
        };
        for n in 0..segments {
            if n > 0 || !path.ends_with('/') {
                path.push('/');
            }
            path.push_str(&self.segment());
        }
        path.replace(['#', '?'], "_")
    }

    /// A value for query parameter `name`: mostly of the right kind, often junk.
    fn param_value(&mut self, name: &str) -> String {
        if self.rng.gen_bool(0.4) {
            return self.junk();
        }
        match name {
            "acquire" | "release" => self.uuid(),
            "index" | "cas" | "flags" => self.rng.gen_range(0..200u64).to_string(),
            "wait" => self.pick(&["1ms", "50ms", "300ms", "1s"]).to_string(),
            "separator" | "seperator" => "/".to_string(),
            _ => String::new(),
        }
    }

    fn query(&mut self) -> String {
        let mut parts = Vec::new();
        for _ in 0..self.rng.gen_range(0..5) {
            let name = if self.rng.gen_bool(0.8) {
                self.pick(&FUZZ_PARAMS).to_string()
            } else {
                self.junk()
            };
            parts.push(match self.rng.gen_range(0..4) {
                0 => name,
                1 => format!("{name}="),
                _ => format!("{name}={}", self.param_value(&name)),
            });
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&")).replace('#', "_")
        }
    }

    fn body(&mut self) -> Vec<u8> {
        let session = json!({
            "Name": self.junk(),
            "TTL": self.pick(&["", "10s", "15s", "1s", "86400s", "86401s", "abc"]),
            "LockDelay": self.pick(&[json!("0s"), json!(5), json!("1ms"), json!(-3), json!("61s")]),
            "Behavior": self.pick(&["release", "delete", "", "explode"]),
        })
        .to_string();
        match self.rng.gen_range(0..12) {
            0..=2 => Vec::new(),
            3 => (0..self.rng.gen_range(1..2048)).map(|_| self.rng.gen()).collect(),
            4 => {
                let cut = self.rng.gen_range(0..session.len());
                session.as_bytes()[..cut].to_vec()
            }
            5 => self
                .pick(&[
                    r#"{"LockDelay": 1e400}"#,
                    r#"{"LockDelay": 18446744073709551616}"#,
                    r#"{"LockDelay": -9223372036854775809}"#,
                    r#"{"TTL": "9999999999999999999s"}"#,
                    r#"{"ttl": "10s", "TTL": 5}"#,
                    r#"{"Checks": [1], "NodeChecks": "x"}"#,
                    "[]",
                    "null",
                    "1",
                    "\"x\"",
                    "{}",
                ])
                .as_bytes()
                .to_vec(),
            6..=8 => session.into_bytes(),
            9 => vec![b'v'; self.pick(&[MAX_VALUE, MAX_VALUE + 1, MAX_VALUE + 1000])],
            _ => self.junk().into_bytes(),
        }
    }

    pub fn request(&mut self) -> FuzzRequest {
        let (prefix, natural) = if self.rng.gen_bool(0.85) {
            self.pick(&FUZZ_ROUTES)
        } else {
            (self.pick(&FUZZ_NEAR_MISSES), "GET")
        };
        let method = match self.rng.gen_range(0..30) {
            0..=9 => Method::from_bytes(natural.as_bytes()).expect("method"),
            10..=16 => Method::GET,
            17..=22 => Method::PUT,
            23..=24 => Method::DELETE,
            25 => Method::POST,
            26 => Method::HEAD,
            27 => Method::PATCH,
            _ => Method::from_bytes(self.pick(&["OPTIONS", "FOO", "TRACE"]).as_bytes()).expect("method"),
        };
        let path = format!("{}{}", self.path(prefix), self.query());
        let body = if self.rng.gen_bool(0.7) {
            self.body()
        } else {
            Vec::new()
        };
        FuzzRequest { method, path, body }
    }

    /// A request Consul must refuse with a 4xx, so it can change nothing.
    pub fn invalid(&mut self) -> FuzzRequest {
        let key = format!("fuzz/{}", self.rng.gen_range(0..1000));
        let body = if self.rng.gen_bool(0.5) {
            self.body()
        } else {
            Vec::new()
        };
        let (method, path, body) = match self.rng.gen_range(0..15) {
            0 => (Method::PUT, format!("/v1/kv/{key}?cas=x{}", self.rng.gen::<u8>()), body),
            1 => (
                Method::PUT,
                format!("/v1/kv/{key}?acquire={}", self.pick(&["xyz", "", "1234"])),
                body,
            ),
            2 => {
                let (a, b) = (self.uuid(), self.uuid());
                (Method::PUT, format!("/v1/kv/{key}?acquire={a}&release={b}"), body)
            }
            3 => (
                Method::PUT,
                format!("/v1/kv/{key}"),
                vec![b'z'; MAX_VALUE + self.rng.gen_range(1..100_000)],
            ),
            4 => (Method::PUT, "/v1/kv/".to_string(), body),
            5 => (Method::DELETE, format!("/v1/kv/{key}?recurse&cas=1"), Vec::new()),
            6 => {
                let cut = self.rng.gen_range(1..20);
                (
                    Method::PUT,
                    "/v1/session/create".to_string(),
                    br#"{"Name": "trunc", "TTL": "10s"}"#[..cut].to_vec(),
                )
            }
            7 => {
                let bad = self.pick(&[r#"{"TTL": "1s"}"#, r#"{"Behavior": "explode"}"#, r#"{"TTL": "25h"}"#]);
                (Method::PUT, "/v1/session/create".to_string(), bad.as_bytes().to_vec())
            }
            8 => {
                let op = self.pick(&["destroy", "renew"]);
                (
                    Method::PUT,
                    format!("/v1/session/{op}/{}", self.pick(&["xyz", "1234", "%zz"])),
                    body,
                )
            }
            9 => {
                let (method, path) = self.pick(&[
                    (Method::POST, "/v1/kv/fuzz/x"),
                    (Method::PATCH, "/v1/session/create"),
                    (Method::DELETE, "/v1/session/list"),
                    (Method::POST, "/v1/session/destroy/00000000-0000-0000-0000-000000000000"),
                ]);
                (method, path.to_string(), body)
            }
            10 => (Method::PUT, format!("/v1/nope/{}", self.junk()), body),
            11 => (Method::PUT, format!("/v1/kv/{key}?%zz=1"), body),
            12 => (
                Method::PUT,
                format!("/v1/session/renew/{}", uuid::Uuid::from_u128(self.rng.gen())),
                body,
            ),
            13 => (Method::PUT, format!("/v1/kv/{key}?flags=-1"), body),
            _ => (Method::DELETE, format!("/v1/kv/{key}?cas=abc"), Vec::new()),
        };
        FuzzRequest {
            method,
            path: path.replace('#', "_"),
            body,
        }
    }
}

/// Outcome of one fuzz request: its answer's status, or why there was none.
pub type FuzzOutcome = (FuzzRequest, Result<(u16, String), String>);

/// Sends `requests` to random agents, `FUZZ_PARALLEL` at a time; the outcomes
/// in the order of `requests`.
pub async fn send_all(targets: &[Consul], requests: Vec<FuzzRequest>, rng: &mut StdRng) -> Vec<FuzzOutcome> {
    let mut pending = requests.into_iter().enumerate();
    let mut running = JoinSet::new();
    let mut out = Vec::new();
    loop {
        while running.len() < FUZZ_PARALLEL {
            let Some((n, req)) = pending.next() else { break };
            let target = targets.choose(rng).expect("targets").clone();
            running.spawn(async move {
                let timeout = if req.may_block() {
                    Duration::from_secs(2)
                } else {
                    ANSWER_TIMEOUT
                };
                let answer = target
                    .try_send(req.method.clone(), &req.path, req.body.clone(), timeout)
                    .await
                    .map(|r| (r.status, r.text().chars().take(200).collect()));
                (n, (req, answer))
            });
        }
        match running.join_next().await {
            Some(done) => out.push(done.expect("fuzz task")),
            None => {
                out.sort_by_key(|(n, _)| *n);
                return out.into_iter().map(|(_, outcome)| outcome).collect();
            }
        }
    }
}
