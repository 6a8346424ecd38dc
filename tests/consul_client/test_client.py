#!/usr/bin/env python3
"""An unmodified Consul client library (py-consul) against a failoverd cluster.

Driven by tests/consul_client.rs, which starts a 3-node cluster and passes:

    CONSUL_LEADER_HTTP_ADDR    host:port (or http://host:port) of the raft leader's Consul API
    CONSUL_FOLLOWER_HTTP_ADDR  the same for a follower
    CONSUL_EXPECT_PEERS        optional: how many addresses /v1/status/peers must list

It uses only py-consul's public API: sessions (create, info, list, node, renew,
destroy), KV (acquire, release, blocking get on a follower, recurse, keys, cas,
delete), status and agent/self. Each check is reported; a failed request's
method, URL, headers, body and answer are printed, so a wire incompatibility
can be read straight from the output. The last line is `N passed, M failed`.

Exit status: 0 all passed, 1 some check failed, 77 py-consul is not installed.
"""

import os
import sys
import threading
import time
import traceback
import urllib.parse
import uuid

try:
    import consul
    import consul.std
except ImportError as e:
    print(f"skipping: py-consul is not importable by {sys.executable}: {e}")
    sys.exit(77)

# The blocking query's `?wait=`; py-consul adds it (and wait/16) to its socket timeout.
BLOCKING_WAIT = "30s"
# How long the blocking call must still be pending before the write that should wake it.
BLOCK_PROOF_SECONDS = 1.0

PASSED = 0
FAILED = []
# Set while a check expects an error answer, so the tracer stays quiet.
EXPECTING_ERROR = threading.Event()


def check(name, ok, detail=""):
    global PASSED
    if ok:
        PASSED += 1
        print(f"ok   {name}")
    else:
        FAILED.append(name)
        print(f"FAIL {name}: {detail}")
    return ok


def equal(name, got, want):
    return check(name, got == want, f"got {got!r}, want {want!r}")


class Step:
    """Runs a block of checks; an exception inside counts as one failed check."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        print(f"--- {self.name}")
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            return False
        check(f"{self.name}: no exception", False, "".join(traceback.format_exception(kind, value, tb)).rstrip())
        return True


def trace_errors(response, *args, **kwargs):
    """A requests hook: prints every unexpected error answer with its request.

    A 404 on a GET is Consul's normal "not there" answer and is not printed;
    nor is an error a check expects (EXPECTING_ERROR); everything else at or
    above 400 is."""
    req = response.request
    if response.status_code < 400 or EXPECTING_ERROR.is_set():
        return
    if response.status_code == 404 and req.method == "GET":
        return
    body = req.body.decode("utf-8", "replace") if isinstance(req.body, bytes) else req.body
    print("  HTTP trace (error answer):")
    print(f"    request:  {req.method} {req.url}")
    print(f"    headers:  {dict(req.headers)}")
    print(f"    body:     {body!r}")
    print(f"    answer:   {response.status_code} {dict(response.headers)}")
    print(f"    body:     {response.text!r}")


def client(var):
    """A py-consul client for the address in env `var`, with the error tracer attached."""
    addr = os.environ.get(var)
    if not addr:
        print(f"error: {var} is not set (host:port of a failoverd Consul API)")
        sys.exit(2)
    parsed = urllib.parse.urlparse(addr if "//" in addr else "//" + addr)
    c = consul.Consul(host=parsed.hostname, port=parsed.port, scheme=parsed.scheme or "http")
    # Instrumentation only: requests' public hook API, the library's code is untouched.
    c.http.session.hooks["response"].append(trace_errors)
    return c


def blocking_get(c, key, index, out):
    """A watch loop as a client writes it: re-issues the blocking get while the
    index is unchanged (Consul allows spurious wake-ups), up to a deadline."""
    deadline = time.monotonic() + 60
    out["calls"] = 0
    try:
        while time.monotonic() < deadline:
            out["calls"] += 1
            new_index, entry = c.kv.get(key, index=index, wait=BLOCKING_WAIT)
            if new_index != index:
                out["index"], out["entry"] = new_index, entry
                out["at"] = time.monotonic()
                return
    except Exception as e:  # reported by the main thread
        out["error"] = "".join(traceback.format_exception(e)).rstrip()


def main():
    print(f"py-consul {getattr(consul, '__version__', '?')} from {os.path.dirname(consul.__file__)}")
    leader = client("CONSUL_LEADER_HTTP_ADDR")
    follower = client("CONSUL_FOLLOWER_HTTP_ADDR")
    prefix = f"failoverd-client-test/{uuid.uuid4().hex[:8]}/"
    key = prefix + "service/leader"
    holder = contender = None
    node_name = None

    with Step("status.leader / status.peers"):
        lead_l, lead_f = leader.status.leader(), follower.status.leader()
        check("status.leader() is a non-empty address", isinstance(lead_l, str) and ":" in lead_l, repr(lead_l))
        equal("leader and follower agree on status.leader()", lead_f, lead_l)
        peers_l, peers_f = leader.status.peers(), follower.status.peers()
        check("status.peers() is a list of addresses", isinstance(peers_l, list) and peers_l, repr(peers_l))
        check("status.leader() is among status.peers()", lead_l in peers_l, f"{lead_l!r} not in {peers_l!r}")
        equal("leader and follower agree on status.peers()", sorted(peers_f), sorted(peers_l))
        if os.environ.get("CONSUL_EXPECT_PEERS"):
            equal("status.peers() count", len(peers_l), int(os.environ["CONSUL_EXPECT_PEERS"]))

    with Step("agent.self"):
        me = leader.agent.self()
        config = me.get("Config", {})
        node_name = config.get("NodeName")
        check("agent.self()['Config']['NodeName'] is set", isinstance(node_name, str) and node_name, repr(config))
        equal("agent.self()['Config']['Datacenter']", config.get("Datacenter"), "dc1")
        equal("agent.self()['Member']['Name'] is the node name", me.get("Member", {}).get("Name"), node_name)
        ttl_min = config.get("SessionTTLMin")
        check("agent.self()['Config']['SessionTTLMin'] is 10s in ns", ttl_min == 10_000_000_000, repr(ttl_min))
        other = follower.agent.self().get("Config", {}).get("NodeName")
        check("the follower reports its own NodeName", other and other != node_name, f"{other!r} vs {node_name!r}")

    with Step("kv.get of a missing key"):
        index, entry = follower.kv.get(key)
        equal("missing key reads as None", entry, None)
        check("a 404 still carries X-Consul-Index", index is not None and int(index) >= 1, repr(index))

    with Step("session.create"):
        holder = leader.session.create(name="py-consul holder", ttl=10, behavior="release", lock_delay=5)
        check("session.create returns a UUID", is_uuid(holder), repr(holder))
        contender = follower.session.create(name="py-consul contender", ttl=10, behavior="delete", lock_delay=0)
        check("session.create through a follower returns a UUID", is_uuid(contender), repr(contender))
        check("two sessions have different ids", holder != contender, holder)

    with Step("session.info"):
        _, info = follower.session.info(holder)
        check("session.info finds the session", isinstance(info, dict), repr(info))
        equal("info ID", info["ID"], holder)
        equal("info Name", info["Name"], "py-consul holder")
        equal("info TTL (string)", info["TTL"], "10s")
        equal("info Behavior", info["Behavior"], "release")
        equal("info LockDelay (ns)", info["LockDelay"], 5_000_000_000)
        equal("info Node is the creating agent's", info["Node"], node_name)
        _, info = leader.session.info(contender)
        equal("contender Behavior", info["Behavior"], "delete")
        equal("contender LockDelay (ns)", info["LockDelay"], 0)
        _, missing = leader.session.info(str(uuid.uuid4()))
        equal("session.info of an unknown id is None", missing, None)

    with Step("session.list / session.node"):
        index, sessions = follower.session.list()
        ids = {s["ID"] for s in sessions}
        check("session.list has both sessions", {holder, contender} <= ids, repr(ids))
        check("session.list carries an index", int(index) >= 1, repr(index))
        _, on_node = leader.session.node(node_name)
        ids = {s["ID"] for s in on_node}
        check("session.node(leader's node) has the holder", holder in ids, repr(ids))
        check("session.node(leader's node) lacks the follower's session", contender not in ids, repr(ids))

    with Step("acquire"):
        equal("holder acquires", leader.kv.put(key, "holder-1", acquire=holder), True)
        index, entry = follower.kv.get(key)
        equal("Key", entry["Key"], key)
        equal("Session", entry.get("Session"), holder)
        equal("LockIndex", entry["LockIndex"], 1)
        equal("Value is decoded to bytes", entry["Value"], b"holder-1")
        equal("Flags", entry["Flags"], 0)
        equal("X-Consul-Index is the key's ModifyIndex", int(index), entry["ModifyIndex"])
        equal("contender cannot acquire while held", follower.kv.put(key, "contender", acquire=contender), False)
        equal("holder re-acquires (same session)", leader.kv.put(key, "holder-2", acquire=holder), True)
        _, entry = leader.kv.get(key)
        equal("re-acquire keeps LockIndex", entry["LockIndex"], 1)
        equal("re-acquire updates Value", entry["Value"], b"holder-2")

    with Step("session.renew"):
        renewed = leader.session.renew(holder)
        check("renew returns the session", isinstance(renewed, dict), repr(renewed))
        equal("renewed ID", renewed["ID"], holder)
        equal("renewed TTL", renewed["TTL"], "10s")
        renewed = follower.session.renew(contender)
        equal("renew through a follower", renewed["ID"], contender)

    with Step("blocking kv.get on a follower, woken by a release on the leader"):
        index, entry = follower.kv.get(key)
        equal("watched key is held", entry.get("Session"), holder)
        out = {}
        watcher = threading.Thread(target=blocking_get, args=(follower, key, index, out), daemon=True)
        started = time.monotonic()
        watcher.start()
        time.sleep(BLOCK_PROOF_SECONDS)
        check("the blocking get is still pending before the write", watcher.is_alive() and "index" not in out, out)
        written = time.monotonic()
        equal("holder releases with a new value", leader.kv.put(key, "released", release=holder), True)
        watcher.join(45)
        check("the blocking get returned", not watcher.is_alive(), "still blocked 45s after the write")
        check("the blocking get raised nothing", "error" not in out, out.get("error"))
        if "index" in out:
            woke = out["at"] - written
            check("it woke promptly after the write (< 10s, not at the 30s wait)", woke < 10, f"{woke:.2f}s")
            check("the new index is greater", int(out["index"]) > int(index), f"{out['index']} vs {index}")
            entry = out["entry"]
            equal("the watch sees the released value", entry["Value"], b"released")
            equal("the watch sees no Session", entry.get("Session"), None)
            equal("the watch sees LockIndex kept", entry["LockIndex"], 1)
            equal("the new index is the ModifyIndex", int(out["index"]), entry["ModifyIndex"])
            print(f"  (blocked {written - started:.2f}s, {out['calls']} call(s), woke {woke * 1000:.0f}ms after write)")

    with Step("re-acquire after a release"):
        equal("contender acquires the released key", follower.kv.put(key, "contender", acquire=contender), True)
        _, entry = leader.kv.get(key)
        equal("LockIndex increments on a new holder", entry["LockIndex"], 2)
        equal("Session is the contender's", entry.get("Session"), contender)
        equal("holder cannot release another session's lock", leader.kv.put(key, "x", release=holder), False)
        equal("contender releases", follower.kv.put(key, "free", release=contender), True)

    with Step("consistency modes on the follower"):
        # A stale read is served from the follower's own state, which may lag the
        # leader's commit (Consul bounds it by nothing): poll until it catches up.
        deadline = time.monotonic() + 10
        while True:
            _, entry = follower.kv.get(key, consistency="stale")
            if (entry and entry["Value"]) == b"free" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        equal("stale read through the follower catches up", entry and entry["Value"], b"free")
        _, entry = follower.kv.get(key, consistency="consistent")
        equal("consistent read through the follower", entry and entry["Value"], b"free")

    with Step("lock-delay after destroying a holding session"):
        delayed = prefix + "delayed"
        equal("holder acquires a second key", leader.kv.put(delayed, "h", acquire=holder), True)
        equal("session.destroy of the holder", leader.session.destroy(holder), True)
        destroyed = time.monotonic()
        _, entry = leader.kv.get(delayed)
        equal("behavior=release keeps the key without Session", (entry["Value"], entry.get("Session")), (b"h", None))
        equal("lock-delay (5s) refuses an immediate acquire", leader.kv.put(delayed, "c", acquire=contender), False)
        while time.monotonic() - destroyed < 20:
            if leader.kv.put(delayed, "c", acquire=contender):
                break
            time.sleep(0.5)
        waited = time.monotonic() - destroyed
        _, entry = leader.kv.get(delayed)
        equal("acquire succeeds once the lock-delay is over", entry.get("Session"), contender)
        check("not before the lock-delay elapsed (~5s)", waited >= 4, f"after {waited:.2f}s")
        _, info = leader.session.info(holder)
        equal("session.info of a destroyed session is None", info, None)
        EXPECTING_ERROR.set()
        try:
            leader.session.renew(holder)
            check("renewing a destroyed session raises NotFound", False, "no exception")
        except consul.NotFound as e:
            check("renewing a destroyed session raises NotFound", True)
            print(f"  (NotFound: {e})")
        finally:
            EXPECTING_ERROR.clear()
        holder = None

    with Step("behavior=delete removes held keys on destroy"):
        equal("contender also holds the watched key", follower.kv.put(key, "ephemeral", acquire=contender), True)
        equal("session.destroy of the contender", follower.session.destroy(contender), True)
        _, entry = leader.kv.get(delayed)
        equal("held key deleted with the session", entry, None)
        _, entry = leader.kv.get(key)
        equal("second held key deleted with the session", entry, None)
        contender = None

    with Step("plain put, binary value, cas, recurse, keys, delete"):
        blob = bytes(range(256))
        equal("put binary value", leader.kv.put(prefix + "blob", blob), True)
        _, entry = follower.kv.get(prefix + "blob")
        equal("binary value round-trips", entry["Value"], blob)
        equal("put with flags", leader.kv.put(prefix + "dir/a", "1", flags=42), True)
        equal("put empty value", leader.kv.put(prefix + "dir/b", None), True)
        _, entry = leader.kv.get(prefix + "dir/a")
        equal("flags stored", entry["Flags"], 42)
        _, entry = leader.kv.get(prefix + "dir/b")
        equal("empty value reads as None", entry["Value"], None)
        equal("cas=0 on an existing key fails", leader.kv.put(prefix + "dir/a", "2", cas=0), False)
        modify_index = entry_index(leader, prefix + "dir/a")
        equal("cas=ModifyIndex succeeds", leader.kv.put(prefix + "dir/a", "2", cas=modify_index), True)
        all_keys = [prefix + "blob", prefix + "dir/a", prefix + "dir/b"]
        index, entries = follower.kv.get(prefix, recurse=True)
        equal("recurse lists every key", sorted(e["Key"] for e in entries), all_keys)
        equal("recurse index is the highest ModifyIndex", int(index), max(e["ModifyIndex"] for e in entries))
        _, keys = follower.kv.get(prefix, keys=True)
        equal("keys lists names", sorted(keys), all_keys)
        _, keys = follower.kv.get(prefix, keys=True, separator="/")
        equal("keys with separator", sorted(keys), [prefix + "blob", prefix + "dir/"])
        equal("delete one key", leader.kv.delete(prefix + "blob"), True)
        _, entry = leader.kv.get(prefix + "blob")
        equal("deleted key is gone", entry, None)
        equal("delete recurse", follower.kv.delete(prefix, recurse=True), True)
        _, entries = leader.kv.get(prefix, recurse=True)
        equal("nothing left under the prefix", entries, None)

    for session in (holder, contender):
        if session:
            try:
                leader.session.destroy(session)
            except Exception:
                pass

    print(f"{PASSED} passed, {len(FAILED)} failed")
    return 0 if not FAILED else 1


def entry_index(c, key):
    _, entry = c.kv.get(key)
    return entry["ModifyIndex"]


def is_uuid(text):
    try:
        return isinstance(text, str) and str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
