//! Unit tests of the lock state machine.
//!
//! Each rule is checked against Consul's documented semantics (sessions 1.4-1.5
//! and KV 2.1 of `reference/locks-consul-etcd-patroni.md`), with the exact
//! CreateIndex / ModifyIndex / LockIndex each command must produce. The
//! invariant tests at the end replay seeded random command logs.

use super::*;

const OK: LockResult = LockResult::Bool(true);
const REFUSED: LockResult = LockResult::Bool(false);
const NODE: &str = "node-a";
const DELAY: Duration = Duration::from_secs(15);

fn sid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn create(id: Uuid, lock_delay: Duration, behavior: Behavior) -> LockCommand {
    create_on(id, NODE, lock_delay, behavior)
}

fn create_on(id: Uuid, node: &str, lock_delay: Duration, behavior: Behavior) -> LockCommand {
    LockCommand::SessionCreate {
        id,
        name: format!("session-{id}"),
        node: node.to_string(),
        ttl: Some(Duration::from_secs(10)),
        lock_delay,
        behavior,
    }
}

fn destroy(id: Uuid) -> LockCommand {
    LockCommand::SessionDestroy { id }
}

fn expire(id: Uuid) -> LockCommand {
    LockCommand::SessionExpire { id }
}

/// Builds an invalidation command for a session.
type Invalidate = fn(Uuid) -> LockCommand;

/// Both ways a session is invalidated, with a name for assertion messages.
fn invalidations() -> [(&'static str, Invalidate); 2] {
    [("SessionDestroy", destroy), ("SessionExpire", expire)]
}

fn put(key: &str, value: &[u8]) -> LockCommand {
    put_with(key, value, 0, None)
}

fn put_with(key: &str, value: &[u8], flags: u64, cas: Option<u64>) -> LockCommand {
    LockCommand::KvSet {
        key: key.to_string(),
        value: value.to_vec(),
        flags,
        cas,
    }
}

fn acquire(key: &str, value: &[u8], session: Uuid) -> LockCommand {
    LockCommand::KvAcquire {
        key: key.to_string(),
        value: value.to_vec(),
        flags: 0,
        session,
    }
}

fn release(key: &str, value: &[u8], session: Uuid) -> LockCommand {
    LockCommand::KvRelease {
        key: key.to_string(),
        value: value.to_vec(),
        flags: 0,
        session,
    }
}

fn delete(key: &str, recurse: bool, cas: Option<u64>) -> LockCommand {
    LockCommand::KvDelete {
        key: key.to_string(),
        recurse,
        cas,
    }
}

fn entry<'a>(state: &'a LockState, key: &str) -> &'a KvEntry {
    state.kv.get(key).unwrap_or_else(|| panic!("key {key:?} missing"))
}

fn kv_keys(state: &LockState) -> Vec<&str> {
    state.kv.keys().map(String::as_str).collect()
}

/// A state with session `s` (release behaviour, 15 s lock-delay) created at index 1.
fn with_session(s: Uuid) -> LockState {
    let mut st = LockState::default();
    assert_eq!(
        st.apply(1, &create(s, DELAY, Behavior::Release)),
        LockResult::Session(s)
    );
    st
}

// ---- sessions ----

/// A created session is stored as sent, with CreateIndex = ModifyIndex = the command's index, and sessions_index follows.
#[test]
fn session_create_stores_session_at_command_index() {
    let mut st = LockState::default();
    let (a, b) = (sid(1), sid(2));
    assert_eq!(st.apply(3, &create(a, DELAY, Behavior::Delete)), LockResult::Session(a));
    let want = Session {
        id: a,
        name: format!("session-{a}"),
        node: NODE.to_string(),
        ttl: Some(Duration::from_secs(10)),
        lock_delay: DELAY,
        behavior: Behavior::Delete,
        create_index: 3,
        modify_index: 3,
    };
    assert_eq!(st.sessions.get(&a), Some(&want));
    assert_eq!(st.sessions_index, 3);

    assert_eq!(
        st.apply(7, &create(b, Duration::ZERO, Behavior::Release)),
        LockResult::Session(b)
    );
    assert_eq!(st.sessions_index, 7);
    assert_eq!(st.sessions[&b].create_index, 7);
    assert_eq!(st.sessions[&a].modify_index, 3, "creating b must not touch a");
    assert_eq!(st.kv_index, 0, "sessions do not move the KV index");
}

/// `sessions_on` returns exactly the sessions of the given node.
#[test]
fn sessions_on_filters_by_node() {
    let mut st = LockState::default();
    st.apply(1, &create_on(sid(1), "n1", DELAY, Behavior::Release));
    st.apply(2, &create_on(sid(2), "n2", DELAY, Behavior::Release));
    st.apply(3, &create_on(sid(3), "n1", DELAY, Behavior::Release));
    let on_n1: Vec<Uuid> = st.sessions_on("n1").map(|s| s.id).collect();
    assert_eq!(on_n1, vec![sid(1), sid(3)]);
    assert_eq!(st.sessions_on("n3").count(), 0);
}

// ---- acquire ----

/// Acquire with a session that never existed is Consul's `invalid session "<id>"` error, not false, and changes nothing.
#[test]
fn acquire_with_unknown_session_is_invalid_and_changes_nothing() {
    let mut st = with_session(sid(1));
    st.apply(2, &put("k", b"v"));
    let before = st.clone();
    let ghost = sid(99);
    for key in ["k", "new"] {
        let got = st.apply(3, &acquire(key, b"x", ghost));
        assert_eq!(
            got,
            LockResult::Invalid(format!("invalid session \"{ghost}\"")),
            "key {key}"
        );
        assert_eq!(st, before, "state changed by an invalid acquire of {key}");
    }
}

/// Acquire with a destroyed session is invalid too, and changes nothing.
#[test]
fn acquire_with_destroyed_session_is_invalid_and_changes_nothing() {
    let s = sid(1);
    let mut st = with_session(s);
    assert_eq!(st.apply(2, &destroy(s)), OK);
    let before = st.clone();
    assert!(matches!(st.apply(3, &acquire("k", b"v", s)), LockResult::Invalid(_)));
    assert_eq!(st, before);
}

/// Acquiring a new key creates it with LockIndex 1, the session, the value and CreateIndex = ModifyIndex = index.
#[test]
fn acquire_of_new_key_creates_it_locked_with_lock_index_1() {
    let s = sid(1);
    let mut st = with_session(s);
    let cmd = LockCommand::KvAcquire {
        key: "svc/leader".into(),
        value: b"me".to_vec(),
        flags: 42,
        session: s,
    };
    assert_eq!(st.apply(5, &cmd), OK);
    let want = KvEntry {
        key: "svc/leader".into(),
        value: b"me".to_vec(),
        flags: 42,
        session: Some(s),
        lock_index: 1,
        create_index: 5,
        modify_index: 5,
    };
    assert_eq!(entry(&st, "svc/leader"), &want);
    assert_eq!(st.kv_index, 5);
    assert_eq!(st.sessions_index, 1, "acquire does not modify sessions");
}

/// A key held by another session cannot be acquired: false, and the state is unchanged.
#[test]
fn acquire_of_key_held_by_another_session_fails_and_changes_nothing() {
    let (a, b) = (sid(1), sid(2));
    let mut st = with_session(a);
    st.apply(2, &create(b, DELAY, Behavior::Release));
    assert_eq!(st.apply(3, &acquire("k", b"a", a)), OK);
    let before = st.clone();
    assert_eq!(st.apply(4, &acquire("k", b"b", b)), REFUSED);
    assert_eq!(st, before);
}

/// Re-acquiring by the holder updates the value and ModifyIndex but keeps LockIndex and CreateIndex.
#[test]
fn reacquire_by_holder_updates_value_and_keeps_lock_index() {
    let s = sid(1);
    let mut st = with_session(s);
    assert_eq!(st.apply(2, &acquire("k", b"one", s)), OK);
    assert_eq!(st.apply(3, &acquire("k", b"two", s)), OK);
    let e = entry(&st, "k");
    assert_eq!((e.value.as_slice(), e.session), (&b"two"[..], Some(s)));
    assert_eq!((e.lock_index, e.create_index, e.modify_index), (1, 2, 3));
    assert_eq!(st.kv_index, 3);
}

/// Acquiring an existing unlocked key increments its LockIndex and keeps its CreateIndex.
#[test]
fn acquire_of_existing_unlocked_key_increments_lock_index() {
    let s = sid(1);
    let mut st = with_session(s);
    st.apply(2, &put("k", b"plain"));
    assert_eq!(entry(&st, "k").lock_index, 0);
    assert_eq!(st.apply(3, &acquire("k", b"locked", s)), OK);
    let e = entry(&st, "k");
    assert_eq!((e.lock_index, e.create_index, e.modify_index), (1, 2, 3));
    assert_eq!((e.value.as_slice(), e.session), (&b"locked"[..], Some(s)));
}

/// The same session acquiring again after its own release is a new acquisition: LockIndex goes up.
#[test]
fn acquire_after_own_release_is_a_new_acquisition() {
    let s = sid(1);
    let mut st = with_session(s);
    st.apply(2, &acquire("k", b"v", s));
    st.apply(3, &release("k", b"v", s));
    assert_eq!(st.apply(4, &acquire("k", b"v", s)), OK);
    let e = entry(&st, "k");
    assert_eq!(
        (e.lock_index, e.create_index, e.modify_index, e.session),
        (2, 2, 4, Some(s))
    );
}

/// A successful acquire clears the key's pending lock-delay; other keys' delays and invalid acquires leave them.
#[test]
fn successful_acquire_clears_pending_delay_of_that_key_only() {
    let (a, b, c) = (sid(1), sid(2), sid(3));
    let mut st = with_session(a);
    st.apply(2, &acquire("k1", b"", a));
    st.apply(3, &acquire("k2", b"", a));
    st.apply(4, &destroy(a));
    assert_eq!(st.pending_delays.len(), 2);
    st.apply(5, &create(b, DELAY, Behavior::Release));
    st.apply(6, &create(c, DELAY, Behavior::Release));
    assert_eq!(st.apply(7, &acquire("k1", b"b", b)), OK);
    assert!(!st.pending_delays.contains_key("k1"));
    assert_eq!(
        st.pending_delays.get("k2"),
        Some(&PendingDelay { delay: DELAY, index: 4 })
    );

    // An acquire that does not happen (here: an unknown session) leaves the delay in place.
    assert!(matches!(
        st.apply(8, &acquire("k2", b"", sid(99))),
        LockResult::Invalid(_)
    ));
    assert_eq!(
        st.pending_delays.get("k2"),
        Some(&PendingDelay { delay: DELAY, index: 4 })
    );
    assert_eq!(st.apply(9, &acquire("k2", b"c", c)), OK);
    assert!(st.pending_delays.is_empty());
}

// ---- release ----

/// Release by the holder clears Session, keeps LockIndex and CreateIndex, bumps ModifyIndex and replaces the value.
#[test]
fn release_by_holder_unlocks_and_replaces_value() {
    let s = sid(1);
    let mut st = with_session(s);
    st.apply(2, &acquire("k", b"held", s));
    let cmd = LockCommand::KvRelease {
        key: "k".into(),
        value: b"released".to_vec(),
        flags: 7,
        session: s,
    };
    assert_eq!(st.apply(3, &cmd), OK);
    let e = entry(&st, "k");
    assert_eq!(e.session, None);
    assert_eq!(
        e.value,
        b"released".to_vec(),
        "release must replace the value with its body"
    );
    assert_eq!(e.flags, 7);
    assert_eq!((e.lock_index, e.create_index, e.modify_index), (1, 2, 3));
    assert_eq!(st.kv_index, 3);
    assert!(st.sessions.contains_key(&s), "release does not end the session");
}

/// Release by a non-holder, of an unlocked key, or of a missing key is false and changes nothing.
#[test]
fn release_by_non_holder_or_of_missing_key_fails_and_changes_nothing() {
    let (a, b) = (sid(1), sid(2));
    let mut st = with_session(a);
    st.apply(2, &create(b, DELAY, Behavior::Release));
    st.apply(3, &acquire("held", b"a", a));
    st.apply(4, &put("unlocked", b"u"));
    let before = st.clone();
    assert_eq!(st.apply(5, &release("held", b"x", b)), REFUSED);
    assert_eq!(st.apply(6, &release("unlocked", b"x", a)), REFUSED);
    assert_eq!(st.apply(7, &release("missing", b"x", a)), REFUSED);
    assert_eq!(st.apply(8, &release("held", b"x", sid(99))), REFUSED);
    assert_eq!(st, before);
}

/// A plain release sets no lock-delay, even for a session with a non-zero lock-delay.
#[test]
fn release_sets_no_lock_delay() {
    let s = sid(1);
    let mut st = with_session(s);
    st.apply(2, &acquire("k", b"", s));
    st.apply(3, &release("k", b"", s));
    assert!(st.pending_delays.is_empty());
    // Destroying the session afterwards holds nothing, so still no delay (Go api.Lock's Unlock).
    st.apply(4, &destroy(s));
    assert!(st.pending_delays.is_empty());
}

// ---- invalidation ----

/// Invalidating a `release` session unlocks its keys, keeping value and LockIndex, with ModifyIndex = invalidation index.
#[test]
fn invalidation_with_release_behavior_unlocks_held_keys() {
    for (name, invalidate) in invalidations() {
        let s = sid(1);
        let mut st = with_session(s);
        st.apply(2, &acquire("a", b"va", s));
        st.apply(3, &acquire("b", b"vb", s));
        assert_eq!(st.apply(4, &invalidate(s)), OK, "{name}");
        for (key, value) in [("a", b"va"), ("b", b"vb")] {
            let e = entry(&st, key);
            assert_eq!(e.session, None, "{name} {key}");
            assert_eq!(e.value, value.to_vec(), "{name} {key}");
            assert_eq!(e.lock_index, 1, "{name} {key}");
            assert_eq!(e.modify_index, 4, "{name} {key}");
        }
        assert_eq!(entry(&st, "a").create_index, 2, "{name}");
        assert_eq!(st.kv_index, 4, "{name}");
    }
}

/// Invalidating a `delete` session deletes its keys and moves the KV index.
#[test]
fn invalidation_with_delete_behavior_removes_held_keys() {
    for (name, invalidate) in invalidations() {
        let s = sid(1);
        let mut st = LockState::default();
        st.apply(1, &create(s, DELAY, Behavior::Delete));
        st.apply(2, &acquire("a", b"", s));
        st.apply(3, &acquire("b", b"", s));
        st.apply(4, &put("c", b""));
        assert_eq!(st.apply(5, &invalidate(s)), OK, "{name}");
        assert_eq!(kv_keys(&st), vec!["c"], "{name}");
        assert_eq!(st.kv_index, 5, "{name}");
        assert_eq!(st.key_index("a"), 5, "{name}: a watcher of a deleted key must wake");
    }
}

/// Invalidation leaves keys it does not hold (unlocked or held by others) exactly as they were.
#[test]
fn invalidation_leaves_keys_not_held_untouched() {
    for behavior in [Behavior::Release, Behavior::Delete] {
        for (name, invalidate) in invalidations() {
            let (a, b) = (sid(1), sid(2));
            let mut st = LockState::default();
            st.apply(1, &create(a, DELAY, behavior));
            st.apply(2, &create(b, DELAY, behavior));
            st.apply(3, &acquire("mine", b"", a));
            st.apply(4, &acquire("theirs", b"", b));
            st.apply(5, &put("free", b""));
            let (theirs, free) = (entry(&st, "theirs").clone(), entry(&st, "free").clone());
            st.apply(6, &invalidate(a));
            assert_eq!(entry(&st, "theirs"), &theirs, "{name} {behavior:?}");
            assert_eq!(entry(&st, "free"), &free, "{name} {behavior:?}");
            assert_eq!(kv_keys(&st).len(), if behavior == Behavior::Delete { 2 } else { 3 });
            assert!(!st.pending_delays.contains_key("theirs") && !st.pending_delays.contains_key("free"));
        }
    }
}

/// Invalidating a session that holds nothing changes no key and leaves the KV index alone.
#[test]
fn invalidation_of_session_holding_nothing_keeps_kv_index() {
    let s = sid(1);
    let mut st = with_session(s);
    st.apply(2, &put("k", b""));
    st.apply(3, &destroy(s));
    assert_eq!(st.kv_index, 2);
    assert_eq!(entry(&st, "k").modify_index, 2);
    assert!(st.pending_delays.is_empty());
}

/// Each held key gets a pending lock-delay with the invalidation index; delays above 60 s are clamped to 60 s.
#[test]
fn invalidation_records_clamped_lock_delay_per_held_key() {
    let cases = [
        (DELAY, DELAY),
        (MAX_LOCK_DELAY, MAX_LOCK_DELAY),
        (Duration::from_secs(120), MAX_LOCK_DELAY),
        (Duration::from_millis(1), Duration::from_millis(1)),
    ];
    for (configured, want) in cases {
        for behavior in [Behavior::Release, Behavior::Delete] {
            for (name, invalidate) in invalidations() {
                let s = sid(1);
                let mut st = LockState::default();
                st.apply(1, &create(s, configured, behavior));
                st.apply(2, &acquire("a", b"", s));
                st.apply(3, &acquire("b", b"", s));
                st.apply(4, &put("c", b""));
                st.apply(9, &invalidate(s));
                let want_map: BTreeMap<String, PendingDelay> = ["a", "b"]
                    .into_iter()
                    .map(|k| (k.to_string(), PendingDelay { delay: want, index: 9 }))
                    .collect();
                assert_eq!(
                    st.pending_delays, want_map,
                    "{name} {behavior:?} lock_delay {configured:?}"
                );
            }
        }
    }
}

/// A session with lock_delay 0 records no pending delay on invalidation.
#[test]
fn invalidation_with_zero_lock_delay_records_no_delay() {
    for behavior in [Behavior::Release, Behavior::Delete] {
        for (name, invalidate) in invalidations() {
            let s = sid(1);
            let mut st = LockState::default();
            st.apply(1, &create(s, Duration::ZERO, behavior));
            st.apply(2, &acquire("a", b"", s));
            st.apply(3, &invalidate(s));
            assert!(st.pending_delays.is_empty(), "{name} {behavior:?}");
            assert!(
                st.kv.get("a").is_none_or(|e| e.session.is_none()),
                "{name} {behavior:?}"
            );
        }
    }
}

/// Destroying or expiring an unknown (or already destroyed) session is idempotent: true, and nothing changes.
#[test]
fn invalidating_unknown_session_is_idempotent() {
    for (name, invalidate) in invalidations() {
        let s = sid(1);
        let mut st = with_session(s);
        st.apply(2, &put("k", b""));
        let before = st.clone();
        assert_eq!(st.apply(3, &invalidate(sid(99))), OK, "{name}");
        assert_eq!(st, before, "{name}: unknown session");
        assert_eq!(st.apply(4, &invalidate(s)), OK, "{name}");
        let after_first = st.clone();
        assert_eq!(st.apply(5, &invalidate(s)), OK, "{name}");
        assert_eq!(st, after_first, "{name}: second invalidation");
    }
}

/// After invalidation the session is gone (sessions_index = invalidation index) and acquiring with it is invalid.
#[test]
fn invalidated_session_is_gone_and_cannot_acquire() {
    for (name, invalidate) in invalidations() {
        let (s, other) = (sid(1), sid(2));
        let mut st = with_session(s);
        st.apply(2, &create(other, DELAY, Behavior::Release));
        st.apply(3, &acquire("k", b"", s));
        st.apply(4, &invalidate(s));
        assert!(!st.sessions.contains_key(&s), "{name}");
        assert!(st.sessions.contains_key(&other), "{name}: other sessions survive");
        assert_eq!(st.sessions_index, 4, "{name}");
        let before = st.clone();
        assert!(
            matches!(st.apply(5, &acquire("k", b"", s)), LockResult::Invalid(_)),
            "{name}"
        );
        assert_eq!(st, before, "{name}");
    }
}

// ---- plain and CAS puts ----

/// A plain put creates a key with CreateIndex = ModifyIndex = index, LockIndex 0, no session, and the flags given.
#[test]
fn plain_put_creates_unlocked_key() {
    let mut st = LockState::default();
    assert_eq!(st.apply(4, &put_with("k", b"v", 9, None)), OK);
    let want = KvEntry {
        key: "k".into(),
        value: b"v".to_vec(),
        flags: 9,
        session: None,
        lock_index: 0,
        create_index: 4,
        modify_index: 4,
    };
    assert_eq!(entry(&st, "k"), &want);
    assert_eq!(st.kv_index, 4);
}

/// A plain put on an existing key replaces value and flags, keeps CreateIndex and sets ModifyIndex.
#[test]
fn plain_put_updates_key_keeping_create_index() {
    let mut st = LockState::default();
    st.apply(4, &put_with("k", b"v1", 1, None));
    assert_eq!(st.apply(6, &put_with("k", b"v2", 2, None)), OK);
    let e = entry(&st, "k");
    assert_eq!((e.value.as_slice(), e.flags), (&b"v2"[..], 2));
    assert_eq!((e.create_index, e.modify_index, e.lock_index), (4, 6, 0));
    assert_eq!(st.kv_index, 6);
}

/// Locks are advisory: a plain put on a locked key succeeds and keeps its Session and LockIndex.
#[test]
fn plain_put_on_locked_key_proceeds_and_keeps_lock() {
    let s = sid(1);
    let mut st = with_session(s);
    st.apply(2, &acquire("k", b"held", s));
    assert_eq!(st.apply(3, &put("k", b"overwritten")), OK);
    let e = entry(&st, "k");
    assert_eq!(e.value, b"overwritten".to_vec());
    assert_eq!(
        (e.session, e.lock_index, e.create_index, e.modify_index),
        (Some(s), 1, 2, 3)
    );
    assert_eq!(st.apply(4, &release("k", b"", s)), OK, "the holder still holds it");
}

/// cas=0 writes only when the key is absent.
#[test]
fn cas_zero_writes_only_if_absent() {
    let mut st = LockState::default();
    assert_eq!(st.apply(2, &put_with("k", b"first", 0, Some(0))), OK);
    assert_eq!((entry(&st, "k").create_index, entry(&st, "k").modify_index), (2, 2));
    let before = st.clone();
    assert_eq!(st.apply(3, &put_with("k", b"second", 0, Some(0))), REFUSED);
    assert_eq!(st, before);
}

/// cas=N writes only when the key exists with ModifyIndex N.
#[test]
fn cas_index_writes_only_at_matching_modify_index() {
    let mut st = LockState::default();
    let before = st.clone();
    assert_eq!(st.apply(2, &put_with("k", b"x", 0, Some(1))), REFUSED, "absent key");
    assert_eq!(st, before);
    st.apply(3, &put("k", b"v1"));
    st.apply(4, &put("other", b""));
    let before = st.clone();
    for stale in [2, 4, 5] {
        assert_eq!(
            st.apply(5, &put_with("k", b"x", 0, Some(stale))),
            REFUSED,
            "cas {stale}"
        );
        assert_eq!(st, before, "cas {stale}");
    }
    assert_eq!(st.apply(6, &put_with("k", b"v2", 5, Some(3))), OK);
    let e = entry(&st, "k");
    assert_eq!(
        (e.value.as_slice(), e.flags, e.create_index, e.modify_index),
        (&b"v2"[..], 5, 3, 6)
    );
    assert_eq!(
        st.apply(7, &put_with("k", b"v3", 0, Some(3))),
        REFUSED,
        "old index after a write"
    );
}

// ---- delete ----

/// A single delete removes exactly that key (not `a/b` or `ab`), returns true, and moves the KV index; a missing key is a no-op.
#[test]
fn single_delete_removes_only_that_key() {
    let mut st = LockState::default();
    for (i, key) in ["a", "a/b", "ab"].into_iter().enumerate() {
        st.apply(i as u64 + 1, &put(key, b""));
    }
    assert_eq!(st.apply(5, &delete("a", false, None)), OK);
    assert_eq!(kv_keys(&st), vec!["a/b", "ab"]);
    assert_eq!(st.kv_index, 5);
    assert_eq!(
        st.apply(6, &delete("a", false, None)),
        OK,
        "deleting a missing key is not an error"
    );
    assert_eq!(st.kv_index, 5, "nothing deleted, index unchanged");
}

/// A recursive delete removes every key starting with the prefix string (`a`, `a/b`, `ab`) and nothing else.
#[test]
fn recursive_delete_removes_pure_string_prefix() {
    let mut st = LockState::default();
    let all = ["A", "_a", "a", "a/b", "a/b/c", "ab", "b", "`"];
    for (i, key) in all.into_iter().enumerate() {
        st.apply(i as u64 + 1, &put(key, b""));
    }
    assert_eq!(st.apply(20, &delete("a", true, None)), OK);
    assert_eq!(kv_keys(&st), vec!["A", "_a", "`", "b"]);
    assert_eq!(st.kv_index, 20);

    assert_eq!(st.apply(21, &delete("a/", true, None)), OK);
    assert_eq!(st.kv_index, 20, "nothing under the prefix, index unchanged");
    assert_eq!(st.apply(22, &delete("", true, None)), OK);
    assert!(st.kv.is_empty(), "the empty prefix deletes everything");
    assert_eq!(st.kv_index, 22);
}

/// Recursive delete with a trailing separator keeps the sibling with the same stem (`foo/` spares `foobar`).
#[test]
fn recursive_delete_of_directory_spares_sibling_with_same_stem() {
    let mut st = LockState::default();
    for (i, key) in ["foo", "foo/a", "foo/b/c", "foobar"].into_iter().enumerate() {
        st.apply(i as u64 + 1, &put(key, b""));
    }
    st.apply(9, &delete("foo/", true, None));
    assert_eq!(kv_keys(&st), vec!["foo", "foobar"]);
}

/// DELETE with cas=0 never deletes an existing key and returns false.
#[test]
fn delete_cas_zero_never_deletes() {
    let mut st = LockState::default();
    st.apply(1, &put("k", b""));
    let before = st.clone();
    assert_eq!(st.apply(2, &delete("k", false, Some(0))), REFUSED);
    assert_eq!(st, before);
}

/// DELETE with cas=N deletes only when ModifyIndex is N, and then moves the KV index.
#[test]
fn delete_cas_index_deletes_only_at_matching_modify_index() {
    let mut st = LockState::default();
    st.apply(1, &put("k", b""));
    st.apply(2, &put("k", b"v2"));
    let before = st.clone();
    assert_eq!(st.apply(3, &delete("k", false, Some(1))), REFUSED);
    assert_eq!(st, before);
    assert_eq!(st.apply(4, &delete("k", false, Some(2))), OK);
    assert!(st.kv.is_empty());
    assert_eq!(st.kv_index, 4);
}

/// A CAS delete is a single-key operation (Consul's KVDeleteCAS): `recurse` must not widen it to the prefix.
#[test]
fn delete_cas_with_recurse_deletes_only_the_single_key() {
    let mut st = LockState::default();
    st.apply(1, &put("a", b""));
    st.apply(2, &put("a/b", b""));
    st.apply(3, &put("ab", b""));
    assert_eq!(st.apply(4, &delete("a", true, Some(1))), OK);
    assert_eq!(
        kv_keys(&st),
        vec!["a/b", "ab"],
        "cas delete removed more than the key it checked"
    );
}

// ---- queries ----

/// `list(prefix)` yields the entries starting with the prefix in key order, and nothing past it.
#[test]
fn list_yields_prefix_entries_in_key_order() {
    let mut st = LockState::default();
    for (i, key) in ["b", "a/z", "a", "a/b", "ab", "a.", "0"].into_iter().enumerate() {
        st.apply(i as u64 + 1, &put(key, b""));
    }
    let keys = |p: &str| st.list(p).map(|e| e.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys("a"), vec!["a", "a.", "a/b", "a/z", "ab"]);
    assert_eq!(keys("a/"), vec!["a/b", "a/z"]);
    assert_eq!(keys(""), vec!["0", "a", "a.", "a/b", "a/z", "ab", "b"]);
    assert!(keys("c").is_empty());
    assert!(keys("a/b/").is_empty());
}

/// `keys(prefix, None)` lists every key under the prefix unfolded.
#[test]
fn keys_without_separator_lists_all_keys() {
    let mut st = LockState::default();
    for (i, key) in ["a/b", "a/c/d", "a/c/e", "b"].into_iter().enumerate() {
        st.apply(i as u64 + 1, &put(key, b""));
    }
    assert_eq!(st.keys("a/", None), vec!["a/b", "a/c/d", "a/c/e"]);
    assert_eq!(
        st.keys("a/", Some("")),
        vec!["a/b", "a/c/d", "a/c/e"],
        "an empty separator folds nothing"
    );
}

/// `keys(prefix, Some("/"))` folds at the first separator after the prefix, like `?keys&separator=/`.
#[test]
fn keys_with_separator_folds_like_consul() {
    let mut st = LockState::default();
    for (i, key) in ["a/b", "a/c/d", "a/c/e", "a/c/f/g", "b", "b/x"].into_iter().enumerate() {
        st.apply(i as u64 + 1, &put(key, b""));
    }
    assert_eq!(st.keys("a/", Some("/")), vec!["a/b", "a/c/"]);
    assert_eq!(st.keys("", Some("/")), vec!["a/", "b", "b/"]);
    assert_eq!(st.keys("a/c", Some("/")), vec!["a/c/"]);
    assert!(st.keys("z", Some("/")).is_empty());
}

/// `key_index` is the key's ModifyIndex when it exists and the KV index when it does not (never 0); prefix_index is the KV index.
#[test]
fn key_index_is_modify_index_or_kv_index() {
    let mut st = LockState::default();
    assert_eq!(
        (st.key_index("w"), st.prefix_index()),
        (1, 1),
        "a blocking index is never 0"
    );
    st.apply(3, &put("w", b""));
    st.apply(5, &put("other", b""));
    assert_eq!(st.key_index("w"), 3);
    assert_eq!(st.key_index("missing"), 5);
    assert_eq!(st.prefix_index(), 5);
    st.apply(8, &delete("w", false, None));
    assert_eq!(st.key_index("w"), 8, "a delete moves a watcher's index forward");
    assert_eq!(st.prefix_index(), 8);
}

/// Across put/acquire/release/invalidate/delete, kv_index and a watched key's index never decrease and move on each change of it.
#[test]
fn watched_key_index_is_monotonic_across_lock_lifecycle() {
    let s = sid(1);
    let mut st = LockState::default();
    let steps: Vec<(LockCommand, bool)> = vec![
        (create(s, DELAY, Behavior::Release), false),
        (put("w", b"0"), true),
        (put("unrelated", b""), false),
        (acquire("w", b"1", s), true),
        (acquire("w", b"1b", s), true),
        (put("w/child", b""), false),
        (release("w", b"2", s), true),
        (acquire("w", b"3", s), true),
        (destroy(s), true),
        (delete("w", false, None), true),
        (put("unrelated", b"again"), false),
        (put_with("w", b"4", 0, Some(0)), true),
        (delete("w", true, None), true),
    ];
    let (mut last_kv, mut last_key) = (st.kv_index, st.key_index("w"));
    for (i, (cmd, touches_w)) in steps.iter().enumerate() {
        let index = i as u64 + 1;
        st.apply(index, cmd);
        let (kv, key) = (st.kv_index, st.key_index("w"));
        assert!(kv >= last_kv, "step {index} {cmd:?}: kv_index {last_kv} -> {kv}");
        assert!(key >= last_key, "step {index} {cmd:?}: key_index {last_key} -> {key}");
        if *touches_w {
            assert_eq!(
                key, index,
                "step {index} {cmd:?}: a change of w must move its index to the command's"
            );
        }
        (last_kv, last_key) = (kv, key);
    }
}

// ---- invariants and determinism over random logs ----

/// A small deterministic generator (xorshift64*), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random log of `n` commands (index i+1 for command i) over a few overlapping keys.
/// Session ids are fresh per create, as the leader generates them.
fn random_log(seed: u64, n: usize) -> Vec<LockCommand> {
    let mut rng = Rng(seed | 1);
    let keys = ["w", "w/x", "wx", "v"];
    let mut created: Vec<Uuid> = Vec::new();
    let mut log = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let key = keys[rng.below(keys.len() as u64) as usize];
        // Mostly one of the last few sessions, so that many are still alive.
        let session = match created.len() {
            0 => sid(10_000),
            len => created[len - 1 - rng.below(len.min(3) as u64) as usize],
        };
        let value = rng.below(100).to_string().into_bytes();
        let cas = i.saturating_sub(rng.below(4));
        let cmd = match rng.below(12) {
            0 | 1 => {
                let id = sid(created.len() as u128 + 1);
                created.push(id);
                let behavior = if rng.below(2) == 0 {
                    Behavior::Release
                } else {
                    Behavior::Delete
                };
                create(id, Duration::from_secs(rng.below(3) * 45), behavior)
            }
            2 if rng.below(2) == 0 => destroy(session),
            2 => expire(session),
            3..=5 => acquire(key, &value, session),
            6 | 7 => release(key, &value, session),
            8 | 9 => put_with(key, &value, rng.below(3), (rng.below(2) == 0).then_some(cas)),
            _ => delete(key, rng.below(3) == 0, (rng.below(3) == 0).then_some(cas)),
        };
        log.push(cmd);
    }
    log
}

/// Every index only grows, every lock is held by a live session, and a key's LockIndex never goes back.
#[test]
fn random_logs_keep_invariants() {
    for seed in 1..=40u64 {
        let mut st = LockState::default();
        let mut last = (0, 1, 1, 0);
        let mut fence: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (i, cmd) in random_log(seed, 300).iter().enumerate() {
            let index = i as u64 + 1;
            st.apply(index, cmd);
            let ctx = format!("seed {seed} index {index} {cmd:?}");
            let now = (st.kv_index, st.key_index("w"), st.prefix_index(), st.sessions_index);
            assert!(
                now.0 >= last.0 && now.1 >= last.1 && now.2 >= last.2 && now.3 >= last.3,
                "{ctx}: {last:?} -> {now:?}"
            );
            last = now;
            for e in st.kv.values() {
                assert!(
                    e.create_index <= e.modify_index && e.modify_index <= st.kv_index,
                    "{ctx}: {e:?}"
                );
                if let Some(s) = e.session {
                    assert!(st.sessions.contains_key(&s), "{ctx}: {} held by dead session", e.key);
                    assert!(e.lock_index >= 1, "{ctx}: held key with LockIndex 0");
                }
                if let Some(&(created, lock_index)) = fence.get(&e.key) {
                    if created == e.create_index {
                        assert!(e.lock_index >= lock_index, "{ctx}: LockIndex of {} went back", e.key);
                    }
                }
                fence.insert(e.key.clone(), (e.create_index, e.lock_index));
            }
            for (key, d) in &st.pending_delays {
                assert!(d.delay <= MAX_LOCK_DELAY && !d.delay.is_zero(), "{ctx}: {key} {d:?}");
            }
        }
    }
}

/// Two states fed the same log give the same results, equal states and byte-identical snapshots, even via a mid-log snapshot restore.
#[test]
fn same_log_gives_identical_state_and_serialization() {
    for seed in [7u64, 99, 12345] {
        let log = random_log(seed, 400);
        let (mut one, mut two) = (LockState::default(), LockState::default());
        let mut restored: Option<LockState> = None;
        for (i, cmd) in log.iter().enumerate() {
            let index = i as u64 + 1;
            assert_eq!(
                one.apply(index, cmd),
                two.apply(index, cmd),
                "seed {seed} index {index}"
            );
            if let Some(r) = restored.as_mut() {
                r.apply(index, cmd);
            }
            if index == 200 {
                let snapshot = serde_json::to_vec(&one).expect("serialize");
                restored = Some(serde_json::from_slice(&snapshot).expect("deserialize"));
            }
        }
        assert!(
            !one.kv.is_empty() || one.kv_index > 0,
            "seed {seed}: the log did nothing"
        );
        assert_eq!(one, two, "seed {seed}");
        let bytes = serde_json::to_vec(&one).expect("serialize");
        assert_eq!(bytes, serde_json::to_vec(&two).expect("serialize"), "seed {seed}");
        let restored = restored.expect("snapshot taken");
        assert_eq!(restored, one, "seed {seed}: restored snapshot diverged");
        assert_eq!(serde_json::to_vec(&restored).expect("serialize"), bytes, "seed {seed}");
    }
}
