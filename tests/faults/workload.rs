//! The client workload of a fault schedule, on the Consul-compatible API of
//! every host, and what it records for the checker.
//!
//! Each host gets one thread that enters the host's network namespace
//! (`setns`) and runs a single-threaded tokio runtime there, so its sockets
//! reach the agent's `127.0.0.1:8500` in that namespace directly (no process
//! per request). On it run three loops until told to stop:
//! - a writer: PUT of a fresh key every ~200 ms, recording whether the agent
//!   acknowledged it (`true`);
//! - a locker: session create, acquire of `nemesis/mutex`, renew, release,
//!   destroy, as a Consul lock client does;
//! - an observer: reads of the validator lock key and of the mutex, recording
//!   (CreateIndex, ModifyIndex, LockIndex, Session) for the LockIndex checks.
//!
//! Every request has a timeout; a stopped or cut-off agent only makes them fail.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use rand::Rng as _;
use serde_json::Value;

/// The Consul-compatible API inside every host's namespace (the agent's default).
pub const CONSUL: &str = "http://127.0.0.1:8500";
/// Prefix of every key the workload writes.
pub const PREFIX: &str = "nemesis/";
/// The key the lock clients contend for.
pub const MUTEX_KEY: &str = "nemesis/mutex";
/// Bound of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One PUT of the writer.
#[derive(Debug, Clone)]
pub struct Write {
    pub host: usize,
    pub key: String,
    pub value: String,
    /// The agent answered `true`: the write must survive.
    pub acked: bool,
}

/// A lock key as one read saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub key: String,
    pub host: usize,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: Option<String>,
}

/// Everything the workload saw.
#[derive(Debug, Default)]
pub struct History {
    pub writes: Vec<Write>,
    pub observations: Vec<Observation>,
    pub sessions_created: u64,
    pub acquired: u64,
    pub refused: u64,
    /// Requests that failed or timed out (expected while faults are on).
    pub errors: u64,
    /// The highest `X-Consul-Index` any answer carried.
    pub max_index: u64,
}

/// The running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), String>>>,
    history: Arc<Mutex<History>>,
}

/// An HTTP client for the namespace the calling thread is in.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("reqwest client")
}

/// Runs `f` on a new thread inside network namespace `ns`, on a
/// single-threaded runtime, with a client whose sockets live in `ns`.
pub fn run_in<T, F, Fut>(ns: &str, f: F) -> JoinHandle<Result<T, String>>
where
    F: FnOnce(reqwest::Client) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        Ok(runtime.block_on(f(client())))
    })
}

impl Workload {
    /// Starts the loops on every host `(index, namespace)`; `validator_key` is
    /// the validator lock's key, observed with the mutex.
    pub fn start(hosts: &[(usize, String)], validator_key: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let threads = hosts
            .iter()
            .map(|(host, ns)| {
                let client_loops = Loops {
                    host: *host,
                    stop: stop.clone(),
                    history: history.clone(),
                    observed: vec![validator_key.to_string(), MUTEX_KEY.to_string()],
                };
                run_in(ns, move |http| async move {
                    let loops = Arc::new(client_loops);
                    tokio::join!(
                        loops.clone().writer(http.clone()),
                        loops.clone().locker(http.clone()),
                        loops.observer(http),
                    );
                })
            })
            .collect();
        Workload { stop, threads, history }
    }

    /// Stops the loops (each ends within one request timeout) and returns the history.
    pub fn stop(mut self) -> Result<History, String> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in std::mem::take(&mut self.threads) {
            thread.join().map_err(|_| "a workload thread panicked".to_string())??;
        }
        let history = std::mem::take(&mut *self.history.lock().map_err(|_| "history poisoned")?);
        Ok(history)
    }
}

impl Drop for Workload {
    /// A run that ends early (a failed wait) stops its loops too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The loops of one host.
struct Loops {
    host: usize,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    observed: Vec<String>,
}

/// Status, `X-Consul-Index` and body of one answer.
struct Answer {
    status: u16,
    index: u64,
    body: String,
}

impl Loops {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn record(&self, f: impl FnOnce(&mut History)) {
        if let Ok(mut h) = self.history.lock() {
            f(&mut h);
        }
    }

    /// Sleeps about `ms` milliseconds (±25%).
    async fn pause(&self, ms: u64) {
        let ms = rand::thread_rng().gen_range(ms * 3 / 4..=ms * 5 / 4);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// One request; `None` (counted as an error) if it fails or times out.
    async fn send(&self, req: reqwest::RequestBuilder) -> Option<Answer> {
        let answer = async {
            let resp = req.send().await.ok()?;
            let status = resp.status().as_u16();
            let index = resp
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let body = resp.text().await.ok()?;
            Some(Answer { status, index, body })
        }
        .await;
        self.record(|h| match &answer {
            Some(a) => h.max_index = h.max_index.max(a.index),
            None => h.errors += 1,
        });
        answer
    }

    /// PUTs a fresh key every ~200 ms.
    async fn writer(self: Arc<Self>, http: reqwest::Client) {
        let mut seq = 0u64;
        while !self.stopped() {
            seq += 1;
            let key = format!("{PREFIX}w{}/{seq:07}", self.host);
            let value = format!("h{}-{seq}", self.host);
            let answer = self
                .send(http.put(format!("{CONSUL}/v1/kv/{key}")).body(value.clone()))
                .await;
            let acked = answer.is_some_and(|a| a.status == 200 && a.body.trim() == "true");
            self.record(|h| {
                h.writes.push(Write {
                    host: self.host,
                    key,
                    value,
                    acked,
                })
            });
            self.pause(200).await;
        }
    }

    /// A Consul lock client: session, acquire, hold (renewing), release, destroy.
    async fn locker(self: Arc<Self>, http: reqwest::Client) {
        while !self.stopped() {
            let create = serde_json::json!({
                "Name": format!("nemesis-h{}", self.host),
                "TTL": "10s",
                "LockDelay": "1s",
                "Behavior": "release",
            });
            let Some(id) = self
                .send(http.put(format!("{CONSUL}/v1/session/create")).json(&create))
                .await
                .filter(|a| a.status == 200)
                .and_then(|a| serde_json::from_str::<Value>(&a.body).ok())
                .and_then(|v| v["ID"].as_str().map(str::to_string))
            else {
                self.pause(500).await;
                continue;
            };
            self.record(|h| h.sessions_created += 1);
            for _ in 0..3 {
                if self.stopped() {
                    break;
                }
                let url = format!("{CONSUL}/v1/kv/{MUTEX_KEY}?acquire={id}");
                let answer = self.send(http.put(url).body(format!("h{}", self.host))).await;
                match answer.map(|a| a.body.trim() == "true") {
                    Some(true) => {
                        self.record(|h| h.acquired += 1);
                        self.pause(500).await;
                        self.send(http.put(format!("{CONSUL}/v1/session/renew/{id}"))).await;
                        self.pause(300).await;
                        let url = format!("{CONSUL}/v1/kv/{MUTEX_KEY}?release={id}");
                        self.send(http.put(url)).await;
                    }
                    Some(false) => self.record(|h| h.refused += 1),
                    None => {}
                }
                self.pause(300).await;
            }
            self.send(http.put(format!("{CONSUL}/v1/session/destroy/{id}"))).await;
        }
    }

    /// Reads the observed lock keys every ~250 ms.
    async fn observer(self: Arc<Self>, http: reqwest::Client) {
        while !self.stopped() {
            for key in &self.observed {
                let Some(answer) = self.send(http.get(format!("{CONSUL}/v1/kv/{key}"))).await else {
                    continue;
                };
                if answer.status != 200 {
                    continue;
                }
                if let Some(o) = parse_observation(&answer.body, key, self.host) {
                    self.record(|h| h.observations.push(o));
                }
            }
            self.pause(250).await;
        }
    }
}

/// The first entry of a Consul KV answer as an observation.
fn parse_observation(body: &str, key: &str, host: usize) -> Option<Observation> {
    let entries: Value = serde_json::from_str(body).ok()?;
    let e = entries.get(0)?;
    Some(Observation {
        key: key.to_string(),
        host,
        create_index: e["CreateIndex"].as_u64()?,
        modify_index: e["ModifyIndex"].as_u64()?,
        lock_index: e["LockIndex"].as_u64()?,
        session: e["Session"].as_str().map(str::to_string),
    })
}

/// Every key under [`PREFIX`] and its value, read through the agent of the
/// namespace this runs in (recurse, from the leader).
pub async fn read_all(http: reqwest::Client) -> Result<Vec<(String, String)>, String> {
    let url = format!("{CONSUL}/v1/kv/{PREFIX}?recurse");
    let resp = http
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {body}"));
    }
    let entries: Vec<Value> = serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}"))?;
    entries
        .iter()
        .map(|e| {
            let key = e["Key"].as_str().ok_or("an entry without Key")?.to_string();
            let value = match e["Value"].as_str() {
                Some(b64) => failoverd::consul_api::codec::base64_decode(b64)
                    .map_err(|err| format!("{key}: {err}"))
                    .map(|v| String::from_utf8_lossy(&v).into_owned())?,
                None => String::new(),
            };
            Ok((key, value))
        })
        .collect()
}
