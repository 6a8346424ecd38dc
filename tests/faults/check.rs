//! The checks run over a schedule's recorded history. Each returns the
//! violations it found, worded for the report; an empty list is a pass.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;

use failoverd::ledger::Tenure;

use super::workload::Observation;
use super::workload::Write;

/// Two signers at once: every pair of overlapping tenures of different nodes.
pub fn overlaps(tenures: &[Tenure]) -> Vec<String> {
    failoverd::ledger::overlaps(tenures)
        .into_iter()
        .map(|(a, b)| {
            format!(
                "two signers: {} (pid {}, {}..{} ns) and {} (pid {}, {}..{} ns) overlap",
                a.node, a.pid, a.first_ns, a.last_ns, b.node, b.pid, b.first_ns, b.last_ns
            )
        })
        .collect()
}

/// For each observed lock key: at one ModifyIndex everyone saw the same entry;
/// within one incarnation of the key (CreateIndex) LockIndex never decreases as
/// ModifyIndex grows; and each LockIndex was held by at most one session.
pub fn lock_indexes(observations: &[Observation]) -> Vec<String> {
    let mut found = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&Observation>> = BTreeMap::new();
    for o in observations {
        by_key.entry(&o.key).or_default().push(o);
    }
    for (key, mut seen) in by_key {
        seen.sort_by_key(|o| (o.modify_index, o.host));
        for pair in seen.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let same_entry = (a.create_index, a.lock_index, &a.session) == (b.create_index, b.lock_index, &b.session);
            if a.modify_index == b.modify_index && !same_entry {
                found.push(format!(
                    "{key}: two different entries at ModifyIndex {}: {a:?} and {b:?}",
                    a.modify_index
                ));
            }
            if a.create_index == b.create_index && b.lock_index < a.lock_index {
                found.push(format!(
                    "{key}: LockIndex went down from {} (ModifyIndex {}) to {} (ModifyIndex {})",
                    a.lock_index, a.modify_index, b.lock_index, b.modify_index
                ));
            }
        }
        let mut holders: BTreeMap<(u64, u64), BTreeSet<&str>> = BTreeMap::new();
        for o in &seen {
            if let Some(s) = &o.session {
                holders.entry((o.create_index, o.lock_index)).or_default().insert(s);
            }
        }
        for ((create, lock), sessions) in holders {
            if sessions.len() > 1 {
                found.push(format!(
                    "{key}: LockIndex {lock} (CreateIndex {create}) held by {} sessions: {sessions:?}",
                    sessions.len()
                ));
            }
        }
    }
    found
}

/// Every acknowledged write is in the final state with its value (the
/// workload never writes a key twice, so nothing may have overwritten it).
pub fn acked_writes(writes: &[Write], fin: &[(String, String)]) -> Vec<String> {
    let state: HashMap<&str, &str> = fin.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    writes
        .iter()
        .filter(|w| w.acked)
        .filter_map(|w| match state.get(w.key.as_str()) {
            Some(v) if *v == w.value => None,
            Some(v) => Some(format!(
                "acknowledged write {}={} (via host {}) reads {v}",
                w.key, w.value, w.host
            )),
            None => Some(format!(
                "acknowledged write {}={} (via host {}) is lost",
                w.key, w.value, w.host
            )),
        })
        .collect()
}

/// The longest time nobody signed between `from_ns` and `to_ns`, in ms, given
/// every signature's time (any order).
pub fn longest_silence_ms(signatures: &[u64], from_ns: u64, to_ns: u64) -> f64 {
    let (start, end) = longest_silence(signatures, from_ns, to_ns);
    (end - start) as f64 / 1e6
}

/// Where the longest time nobody signed between `from_ns` and `to_ns` was:
/// (last signature before it or `from_ns`, first after it or `to_ns`).
pub fn longest_silence(signatures: &[u64], from_ns: u64, to_ns: u64) -> (u64, u64) {
    let mut times: Vec<u64> = signatures
        .iter()
        .copied()
        .filter(|&t| t >= from_ns && t <= to_ns)
        .collect();
    times.sort_unstable();
    let mut edges = vec![from_ns];
    edges.extend(times);
    edges.push(to_ns.max(from_ns));
    edges
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|(a, b)| b - a)
        .unwrap_or((from_ns, from_ns))
}

/// Handovers: tenures that start on another node than the one before.
pub fn promotions(tenures: &[Tenure]) -> usize {
    tenures.windows(2).filter(|w| w[0].node != w[1].node).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(modify: u64, lock: u64, session: Option<&str>) -> Observation {
        Observation {
            key: "k".into(),
            host: 0,
            create_index: 1,
            modify_index: modify,
            lock_index: lock,
            session: session.map(str::to_string),
        }
    }

    fn tenure(node: &str, pid: u32, first: u64, last: u64) -> Tenure {
        Tenure {
            node: node.into(),
            pid,
            first_ns: first,
            last_ns: last,
            signatures: 2,
        }
    }

    /// A clean history of acquire, release and re-acquire passes.
    #[test]
    fn lock_index_history_of_one_holder_at_a_time_passes() {
        let seen = [
            obs(5, 1, Some("a")),
            obs(5, 1, Some("a")),
            obs(7, 1, None),
            obs(9, 2, Some("b")),
            obs(12, 3, Some("a")),
        ];
        assert_eq!(lock_indexes(&seen), Vec::<String>::new());
    }

    /// Two sessions under one LockIndex, a LockIndex going down, and two
    /// entries at one ModifyIndex are each caught.
    #[test]
    fn lock_index_violations_are_caught() {
        assert_eq!(lock_indexes(&[obs(5, 1, Some("a")), obs(6, 1, Some("b"))]).len(), 1);
        assert_eq!(lock_indexes(&[obs(5, 2, Some("a")), obs(6, 1, Some("a"))]).len(), 1);
        assert_eq!(lock_indexes(&[obs(5, 2, Some("a")), obs(5, 2, None)]).len(), 1);
        // A deleted and recreated key starts counting again.
        let mut recreated = obs(9, 1, Some("c"));
        recreated.create_index = 8;
        assert!(lock_indexes(&[obs(5, 3, Some("a")), recreated]).is_empty());
    }

    /// Acked writes must be there with their value; unacked ones may be missing.
    #[test]
    fn lost_and_changed_acked_writes_are_caught() {
        let w = |key: &str, value: &str, acked| Write {
            host: 1,
            key: key.into(),
            value: value.into(),
            acked,
        };
        let writes = [
            w("a", "1", true),
            w("b", "2", true),
            w("c", "3", false),
            w("d", "4", true),
        ];
        let fin = [("a".to_string(), "1".to_string()), ("b".to_string(), "x".to_string())];
        let found = acked_writes(&writes, &fin);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("b=2") && found[1].contains("d=4 (via host 1) is lost"));
    }

    /// Interleaved tenures of two nodes are an overlap; a clean handover is not.
    #[test]
    fn overlapping_signers_are_caught() {
        assert!(overlaps(&[tenure("a", 1, 0, 10), tenure("b", 2, 20, 30)]).is_empty());
        assert_eq!(overlaps(&[tenure("a", 1, 0, 25), tenure("b", 2, 20, 30)]).len(), 1);
    }

    /// Silences count from the window's edges; promotions count node changes.
    #[test]
    fn silences_and_promotions() {
        assert_eq!(longest_silence_ms(&[3_000_000, 1_000_000], 0, 10_000_000), 7.0);
        let t = [tenure("a", 1, 0, 1), tenure("a", 3, 2, 3), tenure("b", 2, 4, 5)];
        assert_eq!(promotions(&t), 1);
    }
}
