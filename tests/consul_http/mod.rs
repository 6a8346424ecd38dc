//! A client of failoverd's Consul-compatible HTTP API for tests, and helpers to
//! run a cluster with it: answers read in full with their arrival time, session
//! and KV calls, config additions to `[consul_api]`. `fuzz` generates the
//! random requests of the fuzz test.

pub mod fuzz;

use std::time::Duration;
use std::time::Instant;

use reqwest::Method;
use serde_json::Value;

use crate::common::Cluster;
use crate::common::PATIENCE;

/// Two validators and an arbiter, the shape failoverd is deployed in.
pub const ROLES: [&str; 3] = ["validator", "validator", "arbiter"];
/// Indexes of the three agents.
pub const ALL: [usize; 3] = [0, 1, 2];
/// The session TTL of the TTL tests (Consul's minimum, the default `session_ttl_min`).
pub const TTL: Duration = Duration::from_secs(10);
/// Consul's KV value limit (512 KiB).
pub const MAX_VALUE: usize = 512 * 1024;
/// Timeout of an ordinary (non-blocking) request; the server itself gives up after ~10 s.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between polls of a session.
pub const POLL: Duration = Duration::from_millis(50);

/// One HTTP answer, read completely.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    /// When the answer had arrived in full.
    pub at: Instant,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Consul-Index`; panics if it is missing or not a number.
    pub fn index(&self) -> u64 {
        self.header("x-consul-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric X-Consul-Index in {self:?}"))
    }

    /// Whether the body is the literal `true` / `false` of a KV write.
    pub fn literal(&self) -> Option<bool> {
        match self.body.as_slice() {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        }
    }
}

/// A client of one agent's Consul-compatible API.
#[derive(Clone)]
pub struct Consul {
    pub http: reqwest::Client,
    pub base: String,
    /// Sent as `X-Consul-Token` when set.
    pub token: Option<String>,
}

impl Consul {
    pub fn of(c: &Cluster, i: usize) -> Self {
        Consul {
            http: c.http.clone(),
            base: format!("http://{}", c.agents[i].consul_addr),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    pub async fn try_send(&self, method: Method, path: &str, body: Vec<u8>, timeout: Duration) -> Result<Resp, String> {
        let url = reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| format!("bad url {path}: {e}"))?;
        let mut req = self.http.request(method, url).timeout(timeout).body(body);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        let resp = req.send().await.map_err(describe)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(describe)?.to_vec();
        Ok(Resp {
            status,
            headers,
            body,
            at: Instant::now(),
        })
    }

    pub async fn send(&self, method: Method, path: &str, body: Vec<u8>) -> Resp {
        self.try_send(method.clone(), path, body, ANSWER_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{method} {}{path}: {e}", self.base))
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, Vec::new()).await
    }

    pub async fn put(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.send(Method::PUT, path, body.into()).await
    }

    /// Creates a session (retrying while the API answers 500, for up to `PATIENCE`); its id.
    pub async fn create_session(&self, spec: Value) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = self.put("/v1/session/create", spec.to_string()).await;
            if r.status == 200 {
                return r.json()["ID"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no ID in {}", r.text()))
                    .to_string();
            }
            assert!(
                r.status == 500 && Instant::now() < deadline,
                "session create {spec} failed: {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn renew(&self, id: &str) -> Resp {
        self.put(&format!("/v1/session/renew/{id}"), "").await
    }

    pub async fn destroy(&self, id: &str) -> Resp {
        self.put(&format!("/v1/session/destroy/{id}"), "").await
    }

    pub async fn acquire(&self, key: &str, id: &str, value: &str) -> Resp {
        self.put(&format!("/v1/kv/{key}?acquire={id}"), value).await
    }

    /// The one entry of `GET /v1/kv/<key><query>`; panics unless 200.
    pub async fn entry(&self, key: &str, query: &str) -> Value {
        let r = self.get(&format!("/v1/kv/{key}{query}")).await;
        assert_eq!(r.status, 200, "GET {key}: {}", r.text());
        r.json()[0].clone()
    }

    /// Whether `GET /v1/session/info/<id><query>` still lists the session
    /// (`Err` if it did not answer 200 within `timeout`).
    pub async fn session_listed(&self, id: &str, query: &str, timeout: Duration) -> Result<(bool, Instant), String> {
        let r = self
            .try_send(
                Method::GET,
                &format!("/v1/session/info/{id}{query}"),
                Vec::new(),
                timeout,
            )
            .await?;
        match r.json() {
            Value::Array(list) if r.status == 200 => Ok((!list.is_empty(), r.at)),
            _ => Err(format!("{} {}", r.status, r.text())),
        }
    }
}

/// A transport error as text; timeouts start with `timeout`.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timeout: {e}")
    } else {
        format!("{e:?}")
    }
}

/// `toml` appended to agent `i`'s config, inside its `[consul_api]` section
/// (the last one the harness writes).
pub fn configure_consul_api(c: &Cluster, i: usize, toml: &str) {
    c.write_config(i);
    let path = &c.agents[i].config;
    let mut text = std::fs::read_to_string(path).expect("read config");
    let last_table = text.lines().rev().find(|l| l.trim_start().starts_with('['));
    assert_eq!(last_table, Some("[consul_api]"), "unexpected config layout:\n{text}");
    text.push_str(toml);
    text.push('\n');
    std::fs::write(path, text).expect("write config");
}

/// A started cluster of `ROLES` at default timings with an agreed leader;
/// returns the leader's index too.
pub async fn started() -> (Cluster, usize) {
    let mut c = Cluster::new(&ROLES);
    c.start_in_order(&ALL);
    let leader = c.wait_leader(&ALL).await;
    (c, leader)
}

/// An agent other than `leader`.
pub fn follower(leader: usize) -> usize {
    (leader + 1) % ALL.len()
}

/// Seed for random tests: `var` if set, else random. Printed.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with {var}={seed})");
    seed
}

/// `d` in seconds.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The signed difference `a - b` in seconds.
pub fn diff(a: Instant, b: Instant) -> f64 {
    if a >= b {
        secs(a - b)
    } else {
        -secs(b - a)
    }
}
