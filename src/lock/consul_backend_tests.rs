//! Tests of `ConsulBackend` against a tiny in-process fake Consul (axum on 127.0.0.1:0).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Router;

use super::*;

/// One request as the fake Consul saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Raw (percent-encoded) path.
    path: String,
    query: String,
    token: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Seen {
    fn param(&self, name: &str) -> Option<String> {
        let url = Url::parse(&format!("http://x/?{}", self.query)).ok()?;
        let found = url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        found
    }
}

/// An answer that replaces the fake's own for the next request.
struct Canned {
    status: u16,
    body: &'static str,
    index: Option<&'static str>,
}

#[derive(Clone, Default)]
struct Entry {
    session: Option<String>,
    lock_index: u64,
    modify_index: u64,
    value: Vec<u8>,
}

#[derive(Default)]
struct Data {
    index: u64,
    next_id: u64,
    /// Session id -> TTL string as created.
    sessions: HashMap<String, String>,
    /// Raw key path -> entry.
    keys: HashMap<String, Entry>,
}

/// Just enough of a Consul agent: sessions, lock ops and blocking KV reads.
struct FakeConsul {
    seen: Mutex<Vec<Seen>>,
    canned: Mutex<VecDeque<Canned>>,
    hang: Mutex<Option<Duration>>,
    data: Mutex<Data>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl FakeConsul {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("a request")
    }

    fn can(&self, status: u16, body: &'static str) {
        self.canned.lock().unwrap().push_back(Canned {
            status,
            body,
            index: Some("7"),
        });
    }

    fn bump(&self, data: &mut Data) -> u64 {
        data.index += 1;
        self.changed.send_replace(data.index);
        data.index
    }

    async fn serve(&self, req: &Seen) -> Response {
        let path = req.path.as_str();
        if let Some(key) = path.strip_prefix("/v1/kv/") {
            return match req.method.as_str() {
                "GET" => self.get(key, req).await,
                _ => self.lock_op(key, req),
            };
        }
        let mut data = self.data.lock().unwrap();
        if path == "/v1/session/create" {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            data.next_id += 1;
            let id = format!("sess-{}", data.next_id);
            let ttl = body["TTL"].as_str().unwrap_or_default().to_string();
            data.sessions.insert(id.clone(), ttl);
            self.bump(&mut data);
            return axum::Json(serde_json::json!({ "ID": id })).into_response();
        }
        if let Some(id) = path.strip_prefix("/v1/session/renew/") {
            return match data.sessions.get(id) {
                Some(ttl) => axum::Json(serde_json::json!([{ "ID": id, "TTL": ttl }])).into_response(),
                None => (
                    axum::http::StatusCode::NOT_FOUND,
                    format!("Session id '{id}' not found"),
                )
                    .into_response(),
            };
        }
        if let Some(id) = path.strip_prefix("/v1/session/destroy/") {
            data.sessions.remove(id);
            let held: Vec<String> = data
                .keys
                .iter()
                .filter(|(_, e)| e.session.as_deref() == Some(id))
                .map(|(k, _)| k.clone())
                .collect();
            for key in held {
                let index = self.bump(&mut data);
                let entry = data.keys.get_mut(&key).unwrap();
                entry.session = None;
                entry.modify_index = index;
            }
            return "true".into_response();
        }
        (axum::http::StatusCode::NOT_FOUND, "no such endpoint").into_response()
    }

    fn lock_op(&self, key: &str, req: &Seen) -> Response {
        let mut data = self.data.lock().unwrap();
        if let Some(id) = req.param("acquire") {
            if !data.sessions.contains_key(&id) {
                let body = format!("invalid session \"{id}\"");
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
            }
            let mut entry = data.keys.get(key).cloned().unwrap_or_default();
            match entry.session.as_deref() {
                Some(holder) if holder != id => return "false".into_response(),
                Some(_) => {}
                None => entry.lock_index += 1,
            }
            entry.session = Some(id);
            entry.value = req.body.clone();
            entry.modify_index = self.bump(&mut data);
            data.keys.insert(key.to_string(), entry);
            return "true".into_response();
        }
        if let Some(id) = req.param("release") {
            let index = data.index + 1;
            let Some(entry) = data.keys.get_mut(key) else {
                return "false".into_response();
            };
            if entry.session.as_deref() != Some(id.as_str()) {
                return "false".into_response();
            }
            entry.session = None;
            entry.value = req.body.clone();
            entry.modify_index = index;
            self.bump(&mut data);
            return "true".into_response();
        }
        (axum::http::StatusCode::BAD_REQUEST, "only acquire and release").into_response()
    }

    async fn get(&self, key: &str, req: &Seen) -> Response {
        let index: u64 = req.param("index").map_or(0, |i| i.parse().unwrap());
        let wait = req
            .param("wait")
            .map_or(Duration::ZERO, |w| parse_go_duration(&w).unwrap());
        if index > 0 {
            let mut changed = self.changed.subscribe();
            let _ = tokio::time::timeout(wait, changed.wait_for(|i| *i > index)).await;
        }
        let data = self.data.lock().unwrap();
        let header = [(INDEX_HEADER, data.index.to_string())];
        match data.keys.get(key) {
            None => (axum::http::StatusCode::NOT_FOUND, header).into_response(),
            Some(e) => {
                let entry = serde_json::json!([{
                    "Key": key, "Flags": 0, "CreateIndex": 1, "ModifyIndex": e.modify_index,
                    "LockIndex": e.lock_index, "Session": e.session, "Value": encode_base64(&e.value),
                }]);
                (header, axum::Json(entry)).into_response()
            }
        }
    }
}

async fn handle(
    State(fake): State<Arc<FakeConsul>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let req = Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        token: header(TOKEN_HEADER),
        content_type: header("content-type"),
        body: body.to_vec(),
    };
    fake.seen.lock().unwrap().push(req.clone());
    let hang = *fake.hang.lock().unwrap();
    if let Some(hang) = hang {
        tokio::time::sleep(hang).await;
    }
    let canned = fake.canned.lock().unwrap().pop_front();
    if let Some(c) = canned {
        let status = axum::http::StatusCode::from_u16(c.status).unwrap();
        let mut resp = (status, c.body).into_response();
        if let Some(index) = c.index {
            resp.headers_mut().insert(INDEX_HEADER, index.parse().unwrap());
        }
        return resp;
    }
    fake.serve(&req).await
}

/// A fake Consul on 127.0.0.1:<random> and a backend pointed at it.
async fn start(token: Option<&str>) -> (Arc<FakeConsul>, ConsulBackend) {
    let fake = Arc::new(FakeConsul {
        seen: Mutex::new(Vec::new()),
        canned: Mutex::new(VecDeque::new()),
        hang: Mutex::new(None),
        data: Mutex::new(Data::default()),
        changed: tokio::sync::watch::Sender::new(0),
    });
    let app = Router::new().fallback(handle).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let backend = ConsulBackend::new(&url, token.map(String::from), "node-a".into()).unwrap();
    (fake, backend)
}

fn spec(name: &str) -> SessionSpec {
    SessionSpec {
        name: name.into(),
        ttl: Duration::from_secs(10),
        lock_delay: Duration::from_millis(1500),
        behavior: Behavior::Delete,
    }
}

fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut buf = [0u8; 3];
        buf[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Session create is `PUT /v1/session/create` with exactly Name/TTL/LockDelay/Behavior as Go durations, and the token header.
#[tokio::test]
async fn create_session_sends_spec_as_consul_json_with_token() {
    let (fake, backend) = start(Some("secret-token")).await;
    let id = backend.create_session(&spec("svc")).await.unwrap();
    assert_eq!(id, "sess-1");
    let req = fake.last();
    assert_eq!((req.method.as_str(), req.path.as_str()), ("PUT", "/v1/session/create"));
    assert_eq!(req.token.as_deref(), Some("secret-token"));
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"Name": "svc", "TTL": "10s", "LockDelay": "1.5s", "Behavior": "delete"})
    );
}

/// An empty session name falls back to the node name; a zero TTL is left out (no TTL).
#[tokio::test]
async fn create_session_defaults_name_and_omits_zero_ttl() {
    let (fake, backend) = start(None).await;
    let mut s = spec("");
    s.ttl = Duration::ZERO;
    s.lock_delay = Duration::ZERO;
    s.behavior = Behavior::Release;
    backend.create_session(&s).await.unwrap();
    let req = fake.last();
    assert_eq!(req.token, None);
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"Name": "node-a", "LockDelay": "0s", "Behavior": "release"})
    );
}

/// `set_token` changes the header of later requests, for every clone; an empty token sends none.
#[tokio::test]
async fn set_token_replaces_the_header_at_runtime() {
    let (fake, backend) = start(None).await;
    let clone = backend.clone();
    backend.set_token(Some("new-token\n".into()));
    clone.destroy_session("x").await.unwrap();
    assert_eq!(fake.last().token.as_deref(), Some("new-token"));
    backend.set_token(Some("  ".into()));
    clone.destroy_session("x").await.unwrap();
    assert_eq!(fake.last().token, None);
    assert!(!format!("{backend:?}").contains("new-token"));
}

/// Renew is `PUT /v1/session/renew/<id>` and returns the TTL in the answer, which Consul may raise.
#[tokio::test]
async fn renew_returns_the_servers_ttl() {
    let (fake, backend) = start(None).await;
    let id = backend.create_session(&spec("svc")).await.unwrap();
    assert_eq!(backend.renew_session(&id).await.unwrap(), Duration::from_secs(10));
    let req = fake.last();
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("PUT", "/v1/session/renew/sess-1")
    );
    fake.can(200, r#"[{"ID":"sess-1","TTL":"1m30s","LockDelay":15000000000}]"#);
    assert_eq!(backend.renew_session(&id).await.unwrap(), Duration::from_secs(90));
    fake.can(200, r#"[{"ID":"sess-1","TTL":"soon"}]"#);
    assert!(matches!(backend.renew_session(&id).await, Err(LockError::Rejected(_))));
}

/// A 404 on renew (Consul's `Session id '..' not found`), or an empty array, is `SessionNotFound`.
#[tokio::test]
async fn renew_of_a_gone_session_is_session_not_found() {
    let (fake, backend) = start(None).await;
    let err = backend.renew_session("gone").await.unwrap_err();
    assert_eq!(err, LockError::SessionNotFound("gone".into()));
    fake.can(200, "[]");
    let err = backend.renew_session("gone").await.unwrap_err();
    assert_eq!(err, LockError::SessionNotFound("gone".into()));
}

/// Acquire/release are PUTs on the key with `?acquire=`/`?release=` and the value as body; `true`/`false` decode.
#[tokio::test]
async fn acquire_and_release_send_value_and_decode_booleans() {
    let (fake, backend) = start(Some("t")).await;
    let a = backend.create_session(&spec("a")).await.unwrap();
    let b = backend.create_session(&spec("b")).await.unwrap();
    assert!(backend.acquire("svc/.lock", &a, b"hello").await.unwrap());
    let req = fake.last();
    assert_eq!((req.method.as_str(), req.path.as_str()), ("PUT", "/v1/kv/svc/.lock"));
    assert_eq!(req.query, format!("acquire={a}"));
    assert_eq!(req.body, b"hello");
    assert_eq!(req.token.as_deref(), Some("t"));
    assert!(!backend.acquire("svc/.lock", &b, b"other").await.unwrap());
    assert!(!backend.release("svc/.lock", &b, b"").await.unwrap());
    assert!(backend.release("svc/.lock", &a, b"bye").await.unwrap());
    let req = fake.last();
    assert_eq!(req.query, format!("release={a}"));
    assert_eq!(req.body, b"bye");
    assert!(backend.acquire("svc/.lock", &b, b"").await.unwrap());
    backend.destroy_session(&b).await.unwrap();
    let req = fake.last();
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("PUT", "/v1/session/destroy/sess-2")
    );
    fake.can(200, "maybe");
    assert!(matches!(
        backend.acquire("k", &a, b"").await,
        Err(LockError::Rejected(_))
    ));
}

/// Acquire with an unknown session (Consul: 500 `invalid session "<id>"`) is `SessionNotFound`.
#[tokio::test]
async fn acquire_with_unknown_session_is_session_not_found() {
    let (_fake, backend) = start(None).await;
    let err = backend.acquire("svc/.lock", "nope", b"").await.unwrap_err();
    assert_eq!(err, LockError::SessionNotFound("nope".into()));
}

/// Keys are percent-encoded per segment; `/` stays a separator.
#[tokio::test]
async fn keys_are_encoded_per_segment() {
    let (fake, backend) = start(None).await;
    let _ = backend.watch("a b/c?d#e", 0, Duration::ZERO).await;
    let req = fake.last();
    assert_eq!(req.path, "/v1/kv/a%20b/c%3Fd%23e");
    assert_eq!(req.query, "consistent");
}

/// A base URL with a path prefix keeps it.
#[tokio::test]
async fn base_url_path_prefix_is_kept() {
    let backend = ConsulBackend::new("http://127.0.0.1:1/consul/", None, "n".into()).unwrap();
    assert_eq!(
        backend.url(&["session", "renew", "x"], "").as_str(),
        "http://127.0.0.1:1/consul/v1/session/renew/x"
    );
    assert_eq!(
        backend.url(&["kv"], "a/b").as_str(),
        "http://127.0.0.1:1/consul/v1/kv/a/b"
    );
}

/// Each kind of failure maps to the documented `LockError`.
#[tokio::test]
async fn http_errors_map_to_lock_errors() {
    let (fake, backend) = start(None).await;
    fake.can(500, "rpc error making call: No cluster leader");
    assert_eq!(backend.destroy_session("x").await.unwrap_err(), LockError::NoLeader);
    fake.can(500, "rpc error making call: EOF");
    let err = backend.destroy_session("x").await.unwrap_err();
    assert!(
        matches!(&err, LockError::Unavailable(m) if m.contains("EOF")),
        "{err:?}"
    );
    fake.can(503, "try later");
    assert!(backend.destroy_session("x").await.unwrap_err().retryable());
    fake.can(429, "rate limit exceeded");
    assert!(backend.destroy_session("x").await.unwrap_err().retryable());
    fake.can(403, "ACL not found");
    let err = backend.create_session(&spec("a")).await.unwrap_err();
    assert!(
        matches!(&err, LockError::Rejected(m) if m.contains("permission denied: check the Consul token")),
        "{err:?}"
    );
    fake.can(500, "rpc error making call: Permission denied");
    assert!(matches!(backend.destroy_session("x").await, Err(LockError::Rejected(m)) if m.contains("permission")));
    fake.can(400, "Request decode failed: bad TTL");
    let err = backend.create_session(&spec("a")).await.unwrap_err();
    assert!(
        matches!(&err, LockError::Rejected(m) if m.contains("bad TTL")),
        "{err:?}"
    );
    fake.can(500, "Invalid Session TTL '3000000000', must be between [10s=24h0m0s]");
    let err = backend.create_session(&spec("a")).await.unwrap_err();
    assert!(
        matches!(&err, LockError::Rejected(m) if m.contains("Invalid Session TTL")),
        "{err:?}"
    );
    fake.can(404, "no such thing");
    assert!(matches!(
        backend.destroy_session("x").await,
        Err(LockError::Rejected(_))
    ));
    fake.can(200, "{}");
    assert!(matches!(
        backend.create_session(&spec("a")).await,
        Err(LockError::Rejected(_))
    ));
}

/// A refused connection and a server that does not answer in time are `Unavailable`.
#[tokio::test]
async fn connection_failures_and_timeouts_are_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let backend = ConsulBackend::new(&url, None, "n".into()).unwrap();
    let err = backend.renew_session("x").await.unwrap_err();
    assert!(matches!(err, LockError::Unavailable(_)), "{err:?}");

    let (fake, backend) = start(None).await;
    let backend = backend.with_timeout(Duration::from_millis(200));
    *fake.hang.lock().unwrap() = Some(Duration::from_secs(3));
    let started = Instant::now();
    let err = backend.renew_session("x").await.unwrap_err();
    assert!(
        matches!(&err, LockError::Unavailable(m) if m.contains("no answer")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// An absent key is a 404 that still carries the index; a held key decodes Session, LockIndex, ModifyIndex, Value.
#[tokio::test]
async fn watch_decodes_absent_and_held_keys() {
    let (fake, backend) = start(None).await;
    let id = backend.create_session(&spec("a")).await.unwrap();
    let w = backend.watch("svc/.lock", 0, Duration::from_secs(1)).await.unwrap();
    assert_eq!(w, Watched { index: 1, key: None });
    assert!(backend.acquire("svc/.lock", &id, b"\x00\xffvalue!").await.unwrap());
    let w = backend.watch("svc/.lock", 0, Duration::from_secs(1)).await.unwrap();
    let key = w.key.unwrap();
    assert_eq!(key.session.as_deref(), Some(id.as_str()));
    assert_eq!((key.lock_index, key.modify_index, w.index), (1, 2, 2));
    assert_eq!(key.value, b"\x00\xffvalue!");
    assert!(backend.release("svc/.lock", &id, b"").await.unwrap());
    let key = backend
        .watch("svc/.lock", 0, Duration::ZERO)
        .await
        .unwrap()
        .key
        .unwrap();
    assert_eq!((key.session, key.lock_index, key.value), (None, 1, Vec::new()));
    fake.can(
        200,
        r#"[{"Key":"k","LockIndex":0,"ModifyIndex":3,"Session":"","Value":null}]"#,
    );
    let key = backend.watch("k", 0, Duration::ZERO).await.unwrap().key.unwrap();
    assert_eq!(
        key,
        KeyState {
            modify_index: 3,
            ..KeyState::default()
        }
    );
}

/// A watch sends `consistent`, the index and the wait, blocks until the key changes, and returns the new index.
#[tokio::test]
async fn watch_blocks_with_index_and_wait_until_a_change() {
    let (fake, backend) = start(None).await;
    let id = backend.create_session(&spec("a")).await.unwrap();
    let first = backend.watch("svc/.lock", 0, Duration::from_secs(5)).await.unwrap();
    let started = Instant::now();
    let watcher = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.watch("svc/.lock", first.index, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watcher.is_finished(), "the watch must block while nothing changes");
    assert!(backend.acquire("svc/.lock", &id, b"v").await.unwrap());
    let w = tokio::time::timeout(Duration::from_secs(3), watcher)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(w.index > first.index);
    assert_eq!(w.key.unwrap().session, Some(id));
    let get = fake.seen().into_iter().rfind(|r| r.method == "GET").unwrap();
    assert_eq!(get.path, "/v1/kv/svc/.lock");
    assert_eq!(get.query, format!("consistent&index={}&wait=5s", first.index));
}

/// A watch with nothing changing returns after the wait with the same index.
#[tokio::test]
async fn watch_returns_after_the_wait_without_a_change() {
    let (_fake, backend) = start(None).await;
    backend.create_session(&spec("a")).await.unwrap();
    let started = Instant::now();
    let w = backend.watch("k", 1, Duration::from_millis(300)).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(w, Watched { index: 1, key: None });
}

/// Index 0 from the server becomes 1; a reply without `X-Consul-Index` is rejected, not looped on.
#[tokio::test]
async fn watch_index_is_never_zero_and_must_be_present() {
    let (fake, backend) = start(None).await;
    fake.canned.lock().unwrap().push_back(Canned {
        status: 404,
        body: "",
        index: Some("0"),
    });
    assert_eq!(backend.watch("k", 5, Duration::ZERO).await.unwrap().index, 1);
    fake.canned.lock().unwrap().push_back(Canned {
        status: 404,
        body: "not here",
        index: None,
    });
    let err = backend.watch("k", 5, Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(&err, LockError::Rejected(m) if m.contains(INDEX_HEADER)),
        "{err:?}"
    );
    fake.can(500, "No cluster leader");
    assert_eq!(
        backend.watch("k", 5, Duration::ZERO).await.unwrap_err(),
        LockError::NoLeader
    );
}

/// Only plain-HTTP base URLs are accepted.
#[test]
fn new_rejects_unusable_urls() {
    for bad in ["https://consul:8501", "not a url", "mailto:x@y"] {
        assert!(
            matches!(ConsulBackend::new(bad, None, "n".into()), Err(LockError::Rejected(_))),
            "{bad}"
        );
    }
}

/// Token files: whitespace and the trailing newline are trimmed, empty is no token, a missing file names the path.
#[test]
fn token_file_is_trimmed_and_empty_means_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "abc-123\n").unwrap();
    assert_eq!(read_token_file(&path).unwrap().as_deref(), Some("abc-123"));
    std::fs::write(&path, "\n").unwrap();
    assert_eq!(read_token_file(&path).unwrap(), None);
    let missing = dir.path().join("missing");
    assert!(read_token_file(&missing).unwrap_err().contains("missing"));
}

/// Durations go out as Go durations and come back from them.
#[test]
fn go_durations_round_trip() {
    for (d, s) in [
        (Duration::ZERO, "0s"),
        (Duration::from_secs(10), "10s"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_millis(1), "0.001s"),
        (Duration::from_nanos(1_000_000_001), "1.000000001s"),
    ] {
        assert_eq!(go_duration(d), s);
        assert_eq!(parse_go_duration(s).unwrap(), d);
    }
    let parsed = ["", "0", "1m30s", "1h0m0s", "250ms", "1.5m", "10us", "7\u{b5}s", "3ns"].map(parse_go_duration);
    let expect = [0, 0, 90_000, 3_600_000, 250, 90_000].map(Duration::from_millis);
    for (p, e) in parsed.iter().zip(expect) {
        assert_eq!(p.as_ref().unwrap(), &e);
    }
    assert_eq!(parsed[6], Ok(Duration::from_micros(10)));
    assert_eq!(parsed[7], Ok(Duration::from_micros(7)));
    assert_eq!(parsed[8], Ok(Duration::from_nanos(3)));
    for bad in ["10", "s", "1x", "-1s", "1..2s"] {
        assert!(parse_go_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(consul_lock_delay(Duration::from_nanos(5)), Duration::from_micros(1));
}

/// The base64 decoder reads padded and unpadded input and refuses garbage.
#[test]
fn base64_decodes() {
    for len in 0..20 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let encoded = encode_base64(&bytes);
        assert_eq!(decode_base64(&encoded), Some(bytes.clone()), "{encoded}");
        assert_eq!(decode_base64(encoded.trim_end_matches('=')), Some(bytes));
    }
    assert_eq!(decode_base64("dGVzdA=="), Some(b"test".to_vec()));
    assert_eq!(decode_base64("dGV*dA=="), None);
    assert_eq!(decode_base64("dGVzd"), None);
    assert_eq!(decode_base64("dG=Vz"), None);
}

/// `failoverd lock` over real HTTP: session, acquire, watch, release and destroy reach the fake Consul in order.
#[tokio::test]
async fn lock_command_runs_over_http() {
    use crate::cli::lock::run_locked_until;
    use crate::cli::lock::LockOpts;
    let (fake, backend) = start(Some("tok")).await;
    let cmd = ["sh", "-c", r#"test "$FAILOVERD_LOCK_HELD" = 1 && exit 5"#].map(String::from);
    let opts = LockOpts {
        ttl: Duration::from_secs(10),
        ..LockOpts::default()
    };
    let run = run_locked_until(&backend, "svc", &cmd, &opts, std::future::pending());
    let code = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 5);
    let seen = fake.seen();
    let calls: Vec<String> = seen
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| format!("{} {}", r.path, r.query.split('=').next().unwrap_or_default()))
        .collect();
    assert_eq!(
        calls,
        [
            "/v1/session/create ",
            "/v1/kv/svc/.lock acquire",
            "/v1/kv/svc/.lock release",
            "/v1/session/destroy/sess-1 ",
        ]
    );
    assert!(seen.iter().all(|r| r.token.as_deref() == Some("tok")));
    assert!(fake.data.lock().unwrap().sessions.is_empty());
}
