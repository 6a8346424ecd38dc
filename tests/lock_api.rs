//! The Consul-compatible HTTP API (`[consul_api] listen`) of real `failoverd
//! agent` processes, driven with reqwest: session TTLs (also across a kill -9
//! of the Raft leader), acquire/release and read headers, lock-delay, blocking
//! queries, bad input, and a seeded fuzz of random requests.
//!
//! The only time bounds asserted are the issue's, which are generous; every
//! other wait is bounded by `PATIENCE`. Randomness is seeded and the seed
//! printed. Measured delays are printed (`--nocapture` shows them). The
//! client and the fuzz generator live in `consul_http/`.

mod common;
mod consul_http;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::PATIENCE;
use consul_http::configure_consul_api;
use consul_http::diff;
use consul_http::follower;
use consul_http::fuzz::send_all;
use consul_http::fuzz::FuzzRequest;
use consul_http::fuzz::Fuzzer;
use consul_http::fuzz::FUZZ_BUDGET;
use consul_http::fuzz::FUZZ_REQUESTS;
use consul_http::fuzz::FUZZ_STATUSES;
use consul_http::secs;
use consul_http::seed;
use consul_http::started;
use consul_http::Consul;
use consul_http::ALL;
use consul_http::MAX_VALUE;
use consul_http::POLL;
use consul_http::ROLES;
use consul_http::TTL;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use reqwest::Method;
use serde_json::json;
use serde_json::Value;
use tokio::task::JoinSet;

/// Polls session `id` on `api` every `POLL` until it is gone; returns when the
/// first `[]` arrived. Panics after `deadline`.
async fn wait_gone(c: &Cluster, api: &Consul, id: &str, deadline: Instant) -> Instant {
    loop {
        if let Ok((false, at)) = api.session_listed(id, "", Duration::from_secs(5)).await {
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "session {id} was never invalidated\n{}",
            c.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A session that stops renewing is invalidated no sooner than its TTL after the
/// last renew was sent, and within TTL + 2 s after that renew was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_session_expires_between_ttl_and_ttl_plus_2s_after_last_renew() {
    let (c, leader) = started().await;
    // Renews go through a follower (forwarded); the leader's API is polled.
    let (api, poll) = (Consul::of(&c, follower(leader)), Consul::of(&c, leader));
    let id = api.create_session(json!({"Name": "ttl", "TTL": "10s"})).await;
    // Two renews 3 s apart: the deadline must follow the last renew, not the create.
    let mut last = None;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let sent = Instant::now();
        let r = api.renew(&id).await;
        assert_eq!(r.status, 200, "renew: {}", r.text());
        let body = r.json();
        assert_eq!(body[0]["ID"], json!(id), "renew answer {body}");
        assert_eq!(body[0]["TTL"], json!("10s"), "renew answer {body}");
        last = Some((sent, r.at));
    }
    let (sent, acked) = last.expect("renewed");
    let gone = wait_gone(&c, &poll, &id, acked + TTL + PATIENCE).await;
    println!(
        "invalidation observed {:.3} s after the last renew was sent (TTL {:.0} s), \
         {:.3} s after TTL from its acknowledgement (renew round trip {:.3} s)",
        diff(gone, sent),
        secs(TTL),
        diff(gone, acked + TTL),
        secs(acked - sent)
    );
    assert!(
        gone >= sent + TTL,
        "session invalidated {:.3} s after the last renew was sent, before its TTL",
        diff(gone, sent)
    );
    assert!(
        gone <= acked + TTL + Duration::from_secs(2),
        "session invalidated {:.3} s after the last renew was acknowledged, later than TTL + 2 s",
        diff(gone, acked)
    );
}

/// A session renewed every 3 s is never invalidated over 25 s (2.5 times its TTL),
/// whether read through the leader, a follower, or a follower's stale state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_renewed_every_3s_never_disappears() {
    let (c, leader) = started().await;
    let f = follower(leader);
    let api = Consul::of(&c, f);
    let readers = [(Consul::of(&c, leader), ""), (api.clone(), ""), (api.clone(), "?stale")];
    let id = api.create_session(json!({"Name": "kept", "TTL": "10s"})).await;
    let start = Instant::now();
    let mut last_renew = start;
    let (mut polls, mut renews, mut errors) = (0u32, 0u32, Vec::new());
    while start.elapsed() < Duration::from_secs(25) {
        if last_renew.elapsed() >= Duration::from_secs(3) {
            last_renew = Instant::now();
            let r = api.renew(&id).await;
            assert_eq!(
                r.status,
                200,
                "renew {} at {:.1} s failed: {}",
                renews + 1,
                secs(start.elapsed()),
                r.text()
            );
            renews += 1;
        }
        let (reader, query) = &readers[polls as usize % readers.len()];
        match reader.session_listed(&id, query, Duration::from_secs(5)).await {
            Ok((listed, _)) => assert!(
                listed,
                "renewed session vanished at {:.3} s (read {query:?} via {})\n{}",
                secs(start.elapsed()),
                reader.base,
                c.logs()
            ),
            Err(e) => errors.push(e),
        }
        polls += 1;
        tokio::time::sleep(POLL).await;
    }
    println!(
        "{renews} renews, {polls} polls over {:.1} s, {} read errors {:?}",
        secs(start.elapsed()),
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(renews >= 7, "only {renews} renews happened");
}

/// When each of `ids` was first seen gone (`None` if not by `deadline`), polling
/// `api` with `query` every `POLL`; unanswered polls are skipped.
async fn watch_sessions(api: Consul, ids: Vec<String>, query: &'static str, deadline: Instant) -> Vec<Option<Instant>> {
    let mut gone: Vec<Option<Instant>> = vec![None; ids.len()];
    while Instant::now() < deadline && gone.iter().any(Option::is_none) {
        for (n, id) in ids.iter().enumerate() {
            if gone[n].is_none() {
                if let Ok((false, at)) = api.session_listed(id, query, Duration::from_secs(1)).await {
                    gone[n] = Some(at);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    gone
}

/// After kill -9 of the Raft leader, no session is invalidated before its TTL has
/// run from its last renew (seen through any survivor, stale reads included), and
/// all are invalidated within the new leader's election + TTL + 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_never_invalidates_sessions_before_ttl_after_last_renew() {
    let (mut c, leader) = started().await;
    let survivors: Vec<usize> = ALL.into_iter().filter(|&i| i != leader).collect();
    let api = Consul::of(&c, survivors[0]);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(api.create_session(json!({"Name": format!("s{n}"), "TTL": "10s"})).await);
    }
    // A gap between create and renew, so an expiry counted from the create would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut renewed = Vec::new();
    for id in &ids {
        let sent = Instant::now();
        let r = api.renew(id).await;
        assert_eq!(r.status, 200, "renew {id}: {}", r.text());
        renewed.push((sent, r.at));
    }
    let killed = Instant::now();
    c.kill9(leader);
    let deadline = renewed[renewed.len() - 1].1 + TTL + PATIENCE;
    let mut watchers = Vec::new();
    for &s in &survivors {
        for query in ["", "?stale"] {
            let task = tokio::spawn(watch_sessions(Consul::of(&c, s), ids.clone(), query, deadline));
            watchers.push((s, query, task));
        }
    }
    let new_leader = c.wait_leader(&survivors).await;
    let elected = Instant::now();
    println!(
        "leader {} killed; node {} leads {:.3} s later",
        c.agents[leader].name,
        c.agents[new_leader].name,
        secs(elected - killed)
    );
    let mut first_gone: Vec<Option<Instant>> = vec![None; ids.len()];
    for (s, query, task) in watchers {
        let gone = task.await.expect("watcher");
        for (n, at) in gone.iter().enumerate() {
            let (sent, _) = renewed[n];
            let at = at.unwrap_or_else(|| {
                panic!(
                    "{} ({query:?}) never saw session {} invalidated\n{}",
                    c.agents[s].name,
                    ids[n],
                    c.logs()
                )
            });
            println!(
                "{} {query:?}: session {n} gone {:.3} s after its last renew was sent, {:.3} s after the election",
                c.agents[s].name,
                diff(at, sent),
                diff(at, elected)
            );
            assert!(
                at >= sent + TTL,
                "{} ({query:?}) saw session {} invalidated {:.3} s after its last renew was sent, before its TTL\n{}",
                c.agents[s].name,
                ids[n],
                diff(at, sent),
                c.logs()
            );
            first_gone[n] = Some(first_gone[n].map_or(at, |f: Instant| f.min(at)));
        }
    }
    for (n, at) in first_gone.iter().enumerate() {
        let at = at.expect("seen gone");
        assert!(
            at <= elected + TTL + Duration::from_secs(5),
            "session {} invalidated only {:.3} s after the new leader was elected",
            ids[n],
            diff(at, elected)
        );
    }
}

/// Acquire, re-acquire, release, concurrent acquires, an invalid session and
/// `behavior=delete` behave as in Consul; every read (404s included) carries
/// Consul's headers; and `X-Consul-Index` never decreases across a sequence of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_release_and_read_headers_follow_consul() {
    let (c, leader) = started().await;
    let f = follower(leader);
    let (api, lead) = (Consul::of(&c, f), Consul::of(&c, leader));
    let a = api.create_session(json!({"Name": "a", "LockDelay": "0s"})).await;
    let b = api.create_session(json!({"Name": "b", "LockDelay": "0s"})).await;
    let key = "service/near/leader";

    let r = api.acquire(key, &a, "node-a").await;
    assert_eq!(
        (r.status, r.literal()),
        (200, Some(true)),
        "first acquire: {}",
        r.text()
    );
    let r = api.acquire(key, &b, "node-b").await;
    assert_eq!(
        (r.status, r.literal()),
        (200, Some(false)),
        "contended acquire: {}",
        r.text()
    );
    let held = api.entry(key, "").await;
    assert_eq!(held["Session"], json!(a), "{held}");
    assert_eq!(held["Value"], json!("bm9kZS1h"), "value is base64 of node-a: {held}");
    let lock_index = held["LockIndex"].as_u64().expect("LockIndex");
    assert!(lock_index >= 1, "{held}");

    let r = api.acquire(key, &a, "node-a2").await;
    assert_eq!((r.status, r.literal()), (200, Some(true)), "re-acquire: {}", r.text());
    let again = api.entry(key, "").await;
    assert_eq!(
        again["LockIndex"],
        json!(lock_index),
        "re-acquire kept LockIndex: {again}"
    );
    assert_eq!(again["Session"], json!(a), "{again}");
    assert_eq!(
        again["Value"],
        json!("bm9kZS1hMg=="),
        "re-acquire replaced the value: {again}"
    );
    assert!(
        again["ModifyIndex"].as_u64() > held["ModifyIndex"].as_u64(),
        "{held} -> {again}"
    );

    let r = api.put(&format!("/v1/kv/{key}?release={b}"), "stolen").await;
    assert_eq!(r.literal(), Some(false), "release by a non-holder: {}", r.text());
    let r = api.put(&format!("/v1/kv/{key}?release={a}"), "free").await;
    assert_eq!((r.status, r.literal()), (200, Some(true)), "release: {}", r.text());
    let released = api.entry(key, "").await;
    assert!(
        released.get("Session").is_none_or(|s| s.is_null() || s == ""),
        "release cleared Session: {released}"
    );
    assert_eq!(
        released["Value"],
        json!("ZnJlZQ=="),
        "release replaced the value: {released}"
    );
    assert_eq!(released["LockIndex"], json!(lock_index), "{released}");
    let r = api.acquire(key, &b, "node-b").await;
    assert_eq!(r.literal(), Some(true), "acquire after release: {}", r.text());
    let taken = api.entry(key, "").await;
    assert_eq!(
        taken["LockIndex"],
        json!(lock_index + 1),
        "a new holder bumps LockIndex: {taken}"
    );

    // Concurrent acquires through all three agents: exactly one wins.
    let mut racers = JoinSet::new();
    for n in 0..9 {
        let via = Consul::of(&c, n % 3);
        let id = via
            .create_session(json!({"Name": format!("racer{n}"), "LockDelay": "0s"}))
            .await;
        racers.spawn(async move {
            let r = via.acquire("race/key", &id, &id).await;
            (id, r.status, r.literal())
        });
    }
    let mut winners = Vec::new();
    while let Some(done) = racers.join_next().await {
        let (id, status, won) = done.expect("racer");
        assert_eq!(status, 200, "racer {id}");
        if won == Some(true) {
            winners.push(id);
        }
    }
    assert_eq!(winners.len(), 1, "winners of one key: {winners:?}");
    assert_eq!(api.entry("race/key", "?consistent").await["Session"], json!(winners[0]));

    let dead = api.create_session(json!({"Name": "dead"})).await;
    let r = api.destroy(&dead).await;
    assert_eq!((r.status, r.literal()), (200, Some(true)), "destroy: {}", r.text());
    let r = api.acquire("other/key", &dead, "x").await;
    assert_eq!(r.status, 500, "acquire with a destroyed session: {}", r.text());
    assert!(r.text().contains("invalid session"), "body: {}", r.text());

    let eph = api
        .create_session(json!({"Name": "eph", "Behavior": "delete", "LockDelay": "0s"}))
        .await;
    let r = api.acquire("ephemeral/x", &eph, "here").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    api.entry("ephemeral/x", "").await;
    let r = api.destroy(&eph).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api.get("/v1/kv/ephemeral/x?consistent").await;
    assert_eq!(r.status, 404, "behavior=delete removed the key: {}", r.text());

    // Headers on every read, 404s included, through both agents.
    for (who, reader) in [("follower", &api), ("leader", &lead)] {
        for path in [
            format!("/v1/kv/{key}"),
            "/v1/kv/no/such/key".to_string(),
            "/v1/kv/?recurse".to_string(),
            "/v1/kv/?keys".to_string(),
            format!("/v1/session/info/{a}"),
            "/v1/session/list".to_string(),
            format!("/v1/session/node/{}", c.agents[f].name),
        ] {
            for (query, effective) in [("", "leader"), ("consistent", "consistent"), ("stale", "stale")] {
                let sep = if path.contains('?') { '&' } else { '?' };
                let url = if query.is_empty() {
                    path.clone()
                } else {
                    format!("{path}{sep}{query}")
                };
                let r = reader.get(&url).await;
                assert!(
                    r.status == 200 || r.status == 404,
                    "GET {url} via {who}: {} {}",
                    r.status,
                    r.text()
                );
                assert!(r.index() >= 1, "GET {url} via {who}: {:?}", r.headers);
                assert_eq!(
                    r.header("x-consul-knownleader"),
                    Some("true"),
                    "GET {url} via {who}: {:?}",
                    r.headers
                );
                let contact = r.header("x-consul-lastcontact").and_then(|v| v.parse::<u64>().ok());
                assert!(contact.is_some(), "GET {url} via {who}: {:?}", r.headers);
                assert_eq!(
                    r.header("x-consul-effective-consistency"),
                    Some(effective),
                    "GET {url} via {who}: {:?}",
                    r.headers
                );
            }
        }
    }

    // X-Consul-Index of a recursive read never decreases, and grows with each write.
    let writers = [Consul::of(&c, 0), Consul::of(&c, 1), Consul::of(&c, 2)];
    let mut seen = [[0u64; 2]; 3];
    let mut last_write = 0;
    for n in 0..24 {
        let w = &writers[n % 3];
        let r = if n % 3 == 2 {
            w.send(Method::DELETE, &format!("/v1/kv/seq/{}", n - 1), Vec::new())
                .await
        } else {
            w.put(&format!("/v1/kv/seq/{n}"), format!("v{n}")).await
        };
        assert_eq!((r.status, r.literal()), (200, Some(true)), "write {n}: {}", r.text());
        for (i, reader) in writers.iter().enumerate() {
            for (m, query) in ["", "&stale"].into_iter().enumerate() {
                let index = reader.get(&format!("/v1/kv/?recurse{query}")).await.index();
                assert!(
                    index >= seen[i][m],
                    "X-Consul-Index went back from {} to {index} on node {} ({query:?}) after write {n}",
                    seen[i][m],
                    i + 1
                );
                seen[i][m] = index;
                if m == 0 {
                    assert!(
                        index > last_write,
                        "write {n} did not raise the index past {last_write}"
                    );
                }
            }
        }
        last_write = seen.iter().map(|s| s[0]).min().unwrap_or(0);
    }
}

/// After session A (LockDelay 5 s) holding a key is destroyed, B cannot acquire the
/// key until 5 s after the destroy was acknowledged; a plain release, or a destroy
/// after a release, starts no delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_blocks_reacquire_only_after_invalidation() {
    let (c, leader) = started().await;
    let api = Consul::of(&c, leader);
    let delay = Duration::from_secs(5);
    let margin = Duration::from_millis(300);
    let a = api.create_session(json!({"Name": "a", "LockDelay": "5s"})).await;
    let b = api.create_session(json!({"Name": "b", "LockDelay": "0s"})).await;
    let r = api.acquire("k", &a, "a").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    let r = api.destroy(&a).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let destroyed = r.at;
    let mut attempts = Vec::new();
    let got = loop {
        let sent = Instant::now();
        let r = api.acquire("k", &b, "b").await;
        assert_eq!(r.status, 200, "acquire: {}", r.text());
        attempts.push((diff(sent, destroyed), r.literal()));
        if r.literal() == Some(true) {
            break sent;
        }
        assert!(destroyed.elapsed() < PATIENCE, "B never acquired k: {attempts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "B acquired k {:.3} s after the destroy was acknowledged (delay 5 s), after {} refusals",
        diff(got, destroyed),
        attempts.len() - 1
    );
    assert!(
        attempts.len() > 1,
        "the first acquire after the destroy was not refused"
    );
    assert!(
        got >= destroyed + delay - margin,
        "acquire sent {:.3} s after the destroy succeeded, inside the 5 s lock-delay; attempts (s after destroy, result): {attempts:?}",
        diff(got, destroyed)
    );
    assert_eq!(api.entry("k", "").await["Session"], json!(b));

    // A plain release starts no delay.
    let a2 = api.create_session(json!({"Name": "a2", "LockDelay": "5s"})).await;
    let r = api.acquire("k2", &a2, "a2").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    let r = api.put(&format!("/v1/kv/k2?release={a2}"), "").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    let r = api.acquire("k2", &b, "b").await;
    assert_eq!(
        r.literal(),
        Some(true),
        "acquire right after a plain release: {}",
        r.text()
    );

    // Release then destroy (Go's api.Lock.Unlock) starts no delay either.
    let a3 = api.create_session(json!({"Name": "a3", "LockDelay": "5s"})).await;
    let r = api.acquire("k3", &a3, "a3").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    let r = api.put(&format!("/v1/kv/k3?release={a3}"), "").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    assert_eq!(api.destroy(&a3).await.status, 200);
    let r = api.acquire("k3", &b, "b").await;
    assert_eq!(r.literal(), Some(true), "acquire after release + destroy: {}", r.text());
}

/// A lock-delay survives a leader change: A holds a key, is destroyed, the leader
/// is killed at once, and B (through a survivor) gets the key no earlier than the
/// delay after the destroy was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_is_not_cut_short_by_a_leader_change() {
    let (mut c, leader) = started().await;
    let survivor = follower(leader);
    let (lead, api) = (Consul::of(&c, leader), Consul::of(&c, survivor));
    let delay = Duration::from_secs(5);
    let a = lead.create_session(json!({"Name": "a", "LockDelay": "5s"})).await;
    let b = lead.create_session(json!({"Name": "b", "LockDelay": "0s"})).await;
    let r = lead.acquire("k", &a, "a").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    let r = lead.destroy(&a).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let destroyed = r.at;
    c.kill9(leader);
    let killed = Instant::now();
    let mut attempts: Vec<(f64, String)> = Vec::new();
    let got = loop {
        let sent = Instant::now();
        let outcome = api
            .try_send(
                Method::PUT,
                &format!("/v1/kv/k?acquire={b}"),
                b"b".to_vec(),
                Duration::from_secs(3),
            )
            .await;
        let won = matches!(&outcome, Ok(r) if r.status == 200 && r.literal() == Some(true));
        attempts.push((
            diff(sent, destroyed),
            match &outcome {
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => e.chars().take(80).collect(),
            },
        ));
        if won {
            break sent;
        }
        assert!(
            destroyed.elapsed() < PATIENCE,
            "B never acquired k: {attempts:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let survivors: Vec<usize> = ALL.into_iter().filter(|&i| i != leader).collect();
    c.wait_leader(&survivors).await;
    println!(
        "leader killed {:.3} s after the destroy; B acquired k {:.3} s after the destroy was acknowledged \
         (delay 5 s) after {} failed attempts",
        diff(killed, destroyed),
        diff(got, destroyed),
        attempts.len() - 1
    );
    assert!(
        got >= destroyed + delay,
        "acquire sent {:.3} s after the destroy succeeded, inside the 5 s lock-delay; attempts: {attempts:?}",
        diff(got, destroyed)
    );
}

/// A blocking read on a follower (default and stale) returns soon after a write made
/// through the leader, with a larger index; with no change it waits out `wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_wake_on_writes_and_wait_out_their_wait() {
    let (c, leader) = started().await;
    let (lead, api) = (Consul::of(&c, leader), Consul::of(&c, follower(leader)));
    let r = lead.put("/v1/kv/watch/k", "v1").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    let before = api.get("/v1/kv/watch/k").await.index();
    let mut blocked = JoinSet::new();
    for query in ["", "&stale"] {
        let (reader, path) = (api.clone(), format!("/v1/kv/watch/k?index={before}&wait=60s{query}"));
        blocked.spawn(async move {
            let sent = Instant::now();
            let r = reader
                .try_send(Method::GET, &path, Vec::new(), Duration::from_secs(90))
                .await;
            (path, sent, r)
        });
    }
    // Let both requests reach the server and block.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = Instant::now();
    let r = lead.put("/v1/kv/watch/k", "v2").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    while let Some(done) = blocked.join_next().await {
        let (path, sent, r) = done.expect("blocking task");
        let r = r.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        println!(
            "GET {path} returned {:.3} s after it was sent, {:.3} s after the write was sent",
            diff(r.at, sent),
            diff(r.at, written)
        );
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert!(
            r.at - sent < Duration::from_secs(30),
            "GET {path} returned only after {:?}",
            r.at - sent
        );
        assert!(r.index() > before, "GET {path}: index {} not past {before}", r.index());
        assert_eq!(r.json()[0]["Value"], json!("djI="), "GET {path} sees v2: {}", r.text());
    }

    let now = api.get("/v1/kv/watch/k").await.index();
    for query in ["", "&stale"] {
        let path = format!("/v1/kv/watch/k?index={now}&wait=2s{query}");
        let sent = Instant::now();
        let r = api
            .try_send(Method::GET, &path, Vec::new(), Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        println!("GET {path} with no change returned after {:.3} s", diff(r.at, sent));
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert!(
            r.at - sent >= Duration::from_secs(2),
            "GET {path} returned after {:?}",
            r.at - sent
        );
        assert_eq!(r.index(), now, "GET {path}: index changed without a write");
    }
}

/// Malformed requests get Consul's 400 / 404 / 413 answers, a renew of an unknown
/// session 404, and with a token configured a request without it 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_missing_tokens_get_consul_errors() {
    let token = "s3cret-token";
    let mut c = Cluster::new(&ROLES);
    let token_file = c.dir.path().join("consul.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    for i in ALL {
        configure_consul_api(&c, i, &format!("token_file = \"{}\"", token_file.display()));
    }
    c.start_in_order(&ALL);
    let leader = c.wait_leader(&ALL).await;
    let anon = Consul::of(&c, follower(leader));
    let api = anon.clone().with_token(token);

    for (method, path) in [
        (Method::GET, "/v1/session/list"),
        (Method::PUT, "/v1/session/create"),
        (Method::GET, "/v1/kv/x"),
        (Method::GET, "/v1/session/list?token=wrong"),
    ] {
        let r = anon.send(method.clone(), path, Vec::new()).await;
        assert_eq!(r.status, 403, "{method} {path} without the token: {}", r.text());
        assert_eq!(r.text().trim(), "Permission denied", "{method} {path}");
    }
    let r = api.get("/v1/session/list").await;
    assert_eq!(r.status, 200, "with X-Consul-Token: {}", r.text());
    let r = anon.get(&format!("/v1/session/list?token={token}")).await;
    assert_eq!(r.status, 200, "with ?token=: {}", r.text());
    let r = anon.put(&format!("/v1/kv/with-query-token?token={token}"), "v").await;
    assert_eq!(
        (r.status, r.literal()),
        (200, Some(true)),
        "PUT with ?token=: {}",
        r.text()
    );

    for body in [r#"{"Name": "x""#, "{not json", r#"{"TTL": 10}"#, "[1, 2]"] {
        let r = api.put("/v1/session/create", body).await;
        assert_eq!(r.status, 400, "session create with {body:?}: {}", r.text());
    }
    let r = api.put("/v1/session/create", r#"{"TTL": "5s"}"#).await;
    assert_eq!(r.status, 400, "TTL below the minimum: {}", r.text());
    assert!(r.text().starts_with("Invalid Session TTL"), "{}", r.text());
    for path in ["/v1/session/renew/xyz", "/v1/session/destroy/xyz"] {
        let r = api.put(path, "").await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }

    let r = api.put("/v1/kv/big", vec![b'x'; MAX_VALUE + 1]).await;
    assert_eq!(r.status, 413, "value of 512 KiB + 1: {}", r.text());
    let r = api.put("/v1/kv/big", vec![b'y'; 2 * MAX_VALUE]).await;
    assert_eq!(r.status, 413, "value of 1 MiB: {}", r.text());
    let r = api.put("/v1/kv/big", vec![b'x'; MAX_VALUE]).await;
    assert_eq!(
        (r.status, r.literal()),
        (200, Some(true)),
        "value of exactly 512 KiB: {}",
        r.text()
    );
    let r = api.get("/v1/kv/big?raw").await;
    assert_eq!(
        (r.status, r.body.len()),
        (200, MAX_VALUE),
        "raw read of the 512 KiB value"
    );

    for path in ["/v1/nope", "/v2/kv/x", "/v1/session/", "/"] {
        let r = api.get(path).await;
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
    }

    let unknown = uuid::Uuid::new_v4().to_string();
    let r = api.renew(&unknown).await;
    assert_eq!(r.status, 404, "renew of an unknown session: {}", r.text());
    assert_eq!(r.text().trim(), format!("Session id '{unknown}' not found"));
}

/// KV edge cases answer as Consul's `agent/kvs_endpoint.go` does: conflicting
/// flags (`cas` with `acquire`/`release`, `recurse` with `cas`) and a GET, PUT or
/// DELETE without a key name are 400s; `?keys` on an empty root is `[]`;
/// `?raw` applies to single-key reads only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_edge_cases_answer_like_consul() {
    let (c, leader) = started().await;
    let api = Consul::of(&c, follower(leader));
    let mut wrong = Vec::new();
    // On the empty store: Consul lists the root as `[]`, not 404.
    let r = api.get("/v1/kv/?keys").await;
    println!("GET /v1/kv/?keys (empty store): {} {}", r.status, r.text().trim());
    if (r.status, r.json()) != (200, json!([])) {
        wrong.push(format!(
            "GET /v1/kv/?keys on an empty store -> {} {:?} (Consul: 200 [])",
            r.status,
            r.text()
        ));
    }
    let s = api.create_session(json!({"Name": "s", "LockDelay": "0s"})).await;
    let r = api.put("/v1/kv/guarded", "v1").await;
    assert_eq!(r.literal(), Some(true), "{}", r.text());
    let stale_cas = api.entry("guarded", "").await["ModifyIndex"].as_u64().expect("index") + 1000;
    for (method, path) in [
        (Method::PUT, format!("/v1/kv/guarded?cas={stale_cas}&acquire={s}")),
        (Method::PUT, format!("/v1/kv/guarded?cas={stale_cas}&release={s}")),
        (Method::PUT, format!("/v1/kv/guarded?acquire={s}&release={s}")),
        (Method::DELETE, "/v1/kv/guarded?recurse&cas=1".to_string()),
        (Method::PUT, "/v1/kv/".to_string()),
        (Method::DELETE, "/v1/kv/".to_string()),
        (Method::GET, "/v1/kv/".to_string()),
    ] {
        let r = api.send(method.clone(), &path, Vec::new()).await;
        println!("{method} {path}: {} {}", r.status, r.text().trim());
        if r.status != 400 {
            wrong.push(format!("{method} {path} -> {} {:?} (Consul: 400)", r.status, r.text()));
        }
    }
    let entry = api.entry("guarded", "").await;
    if entry.get("Session").is_some_and(|v| !v.is_null() && v != "") {
        wrong.push(format!("a refused request locked the key: {entry}"));
    }
    let r = api.get("/v1/kv/?recurse&raw").await;
    println!("GET /v1/kv/?recurse&raw: {} {}", r.status, r.text().trim());
    if !r.json().is_array() {
        wrong.push(format!(
            "GET /v1/kv/?recurse&raw -> {} {:?} (Consul: the JSON list)",
            r.status,
            r.text()
        ));
    }
    assert!(wrong.is_empty(), "differences from Consul:\n{}", wrong.join("\n"));
}

/// With only one of three agents running there is no leader: a session create
/// answers 500 `No cluster leader` once the server's retries (~10 s) run out,
/// while a stale read still answers, with `X-Consul-KnownLeader: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_create_without_a_leader_answers_500() {
    let mut c = Cluster::new(&ROLES);
    c.start(0);
    let api = Consul::of(&c, 0);
    let deadline = Instant::now() + PATIENCE;
    // Wait until the API listens (agent/self needs no leader).
    while api
        .try_send(Method::GET, "/v1/agent/self", Vec::new(), Duration::from_secs(2))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "consul API never came up\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = Instant::now();
    let r = api
        .try_send(
            Method::PUT,
            "/v1/session/create",
            br#"{"Name": "x"}"#.to_vec(),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("session create without a leader: {e}\n{}", c.logs()));
    println!(
        "no-leader answer after {:.3} s: {} {}",
        diff(r.at, sent),
        r.status,
        r.text()
    );
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.text().trim(), "No cluster leader");
    // A stale read needs no leader, and says there is none.
    let r = api.get("/v1/kv/anything?stale").await;
    assert_eq!(r.status, 404, "stale read without a leader: {}", r.text());
    assert_eq!(r.header("x-consul-knownleader"), Some("false"), "{:?}", r.headers);
    assert_eq!(
        r.header("x-consul-effective-consistency"),
        Some("stale"),
        "{:?}",
        r.headers
    );
}

/// `X-Consul-Index` of `GET /v1/kv/?recurse` on `api`.
async fn kv_index(api: &Consul) -> u64 {
    api.get("/v1/kv/?recurse").await.index()
}

/// Seeded random requests (random methods, real route prefixes with random segments,
/// escapes and unicode, real parameter names with junk values, random bodies) never
/// crash an agent or make it panic, get only Consul's statuses, and requests
/// answered with a 4xx never change the KV index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_never_crash_and_refused_ones_change_nothing() {
    let seed = seed("FAILOVERD_FUZZ_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fuzzer = Fuzzer {
        rng: StdRng::seed_from_u64(rng.gen()),
        sessions: Vec::new(),
    };
    let (mut c, leader) = started().await;
    // A fresh connection per request: after answering a request without reading
    // its body, the server closes the connection, and a pooled client would then
    // see a reused connection fail (hyper `IncompleteMessage`) on the next request.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let targets: Vec<Consul> = ALL
        .iter()
        .map(|&i| Consul {
            http: fresh.clone(),
            ..Consul::of(&c, i)
        })
        .collect();
    let lead = Consul::of(&c, leader);
    let start = Instant::now();
    let (mut sent, mut rounds, mut timed_out, mut cut_off) = (0usize, 0usize, 0usize, 0usize);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut samples_500 = Vec::new();
    while sent < FUZZ_REQUESTS && start.elapsed() < FUZZ_BUDGET {
        rounds += 1;
        // Anything goes.
        let batch: Vec<FuzzRequest> = (0..100).map(|_| fuzzer.request()).collect();
        sent += batch.len();
        for (req, outcome) in send_all(&targets, batch, &mut rng).await {
            match outcome {
                Ok((status, body)) => {
                    *statuses.entry(status).or_default() += 1;
                    assert!(
                        FUZZ_STATUSES.contains(&status),
                        "seed {seed}: {req:?} answered {status} {body}"
                    );
                    if status == 500 && samples_500.len() < 8 {
                        samples_500.push(format!("{req:?} -> {body}"));
                    }
                    if status == 200 && req.path.starts_with("/v1/session/create") {
                        if let Some(id) = serde_json::from_str::<Value>(&body)
                            .ok()
                            .and_then(|v| v["ID"].as_str().map(String::from))
                        {
                            fuzzer.sessions.push(id);
                        }
                    }
                }
                Err(e) if req.may_block() && e.starts_with("timeout") => timed_out += 1,
                Err(e) if req.may_be_cut_off(&e) => cut_off += 1,
                Err(e) => panic!("seed {seed}: {req:?} got no answer: {e}\n{}", c.logs()),
            }
        }
        // No session may expire (and release keys) during the check below.
        let list = lead.get("/v1/session/list").await.json();
        for s in list.as_array().into_iter().flatten() {
            let id = s["ID"].as_str().expect("session id");
            assert_eq!(lead.destroy(id).await.status, 200, "destroy {id}");
        }
        // Only invalid requests: the KV index must not move.
        let before = kv_index(&lead).await;
        let batch: Vec<FuzzRequest> = (0..25).map(|_| fuzzer.invalid()).collect();
        sent += batch.len();
        for (req, outcome) in send_all(&targets, batch, &mut rng).await {
            let (status, body) = match outcome {
                Ok(answer) => answer,
                Err(e) if req.may_be_cut_off(&e) => {
                    cut_off += 1;
                    continue;
                }
                Err(e) => panic!("seed {seed}: {req:?} got no answer: {e}\n{}", c.logs()),
            };
            *statuses.entry(status).or_default() += 1;
            assert!(
                (400..500).contains(&status) && FUZZ_STATUSES.contains(&status),
                "seed {seed}: invalid {req:?} answered {status} {body}"
            );
        }
        let after = kv_index(&lead).await;
        assert_eq!(
            before, after,
            "seed {seed}: refused requests moved the KV index (round {rounds})"
        );
        assert_agents_healthy(&mut c, seed).await;
    }
    println!(
        "seed {seed}: {sent} requests in {rounds} rounds, {:.1} s; statuses {statuses:?}; \
         {timed_out} blocking reads cut off by the client; {cut_off} large bodies cut off; sample 500s: {samples_500:#?}",
        secs(start.elapsed())
    );
    assert_agents_healthy(&mut c, seed).await;
}

/// Every agent still runs, answers `/health` with 200, and has logged no panic.
async fn assert_agents_healthy(c: &mut Cluster, seed: u64) {
    for i in ALL {
        let name = c.agents[i].name.clone();
        assert!(c.agents[i].running(), "seed {seed}: {name} died\n{}", c.logs());
        let health = c
            .http
            .get(format!("{}/health", c.agents[i].api()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(health.ok(), Some(200), "seed {seed}: /health of {name}\n{}", c.logs());
        let log = c.log_text(i);
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).take(5).collect();
        assert!(
            panics.is_empty(),
            "seed {seed}: {name} logged a panic:\n{}",
            panics.join("\n")
        );
    }
}
