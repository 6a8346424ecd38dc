//! The signature ledger fake-neard writes (one JSON line per "signed block"),
//! and the one invariant that matters: tenures of different signers never
//! overlap. Used by the demo, the tests and the fault suite.

use std::path::Path;

use serde::Deserialize;

/// One signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Signature {
    /// CLOCK_MONOTONIC nanoseconds (shared by every process on the machine).
    pub t_ns: u64,
    /// The signer's process id.
    pub pid: u32,
    /// The block height it signed.
    pub height: u64,
}

/// A signer's tenure: one neard process signing, first to last signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenure {
    /// The node (FAILOVERD_NODE_NAME).
    pub node: String,
    /// The neard process.
    pub pid: u32,
    /// First signature (CLOCK_MONOTONIC ns).
    pub first_ns: u64,
    /// Last signature.
    pub last_ns: u64,
    /// Signatures in the tenure.
    pub signatures: u64,
}

#[derive(Deserialize)]
struct Line {
    t_ns: u64,
    node: String,
    pid: u32,
}

/// Reads the ledger's tenures, ordered by their first signature. Unreadable
/// lines (a torn last line) are skipped.
pub fn tenures(path: &Path) -> Vec<Tenure> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_pid: Vec<Tenure> = Vec::new();
    for line in text.lines().filter_map(|l| serde_json::from_str::<Line>(l).ok()) {
        match by_pid.iter_mut().find(|t| t.pid == line.pid && t.node == line.node) {
            Some(t) => {
                t.first_ns = t.first_ns.min(line.t_ns);
                t.last_ns = t.last_ns.max(line.t_ns);
                t.signatures += 1;
            }
            None => by_pid.push(Tenure {
                node: line.node,
                pid: line.pid,
                first_ns: line.t_ns,
                last_ns: line.t_ns,
                signatures: 1,
            }),
        }
    }
    by_pid.sort_by_key(|t| t.first_ns);
    by_pid
}

/// Pairs of tenures of different nodes that overlap in time: two signers at once.
pub fn overlaps(tenures: &[Tenure]) -> Vec<(Tenure, Tenure)> {
    let mut found = Vec::new();
    for (i, a) in tenures.iter().enumerate() {
        for b in &tenures[i + 1..] {
            if a.node != b.node && b.first_ns <= a.last_ns && a.first_ns <= b.last_ns {
                found.push((a.clone(), b.clone()));
            }
        }
    }
    found
}

/// Gaps between consecutive tenures (ns): how long nobody signed at each handover.
pub fn gaps(tenures: &[Tenure]) -> Vec<(String, String, u64)> {
    tenures
        .windows(2)
        .map(|w| {
            (
                w[0].node.clone(),
                w[1].node.clone(),
                w[1].first_ns.saturating_sub(w[0].last_ns),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(lines: &[(&str, u32, u64)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(h, (node, pid, t))| format!("{{\"t_ns\":{t},\"node\":\"{node}\",\"pid\":{pid},\"height\":{h}}}\n"))
            .collect();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    /// Signers that hand over cleanly have no overlap and a measured gap.
    #[test]
    fn clean_handover_has_a_gap_and_no_overlap() {
        let f = ledger(&[("a", 1, 10), ("a", 1, 20), ("b", 2, 50), ("b", 2, 60)]);
        let t = tenures(f.path());
        assert_eq!(t.len(), 2);
        assert!(overlaps(&t).is_empty());
        assert_eq!(gaps(&t), vec![("a".to_string(), "b".to_string(), 30)]);
    }

    /// A signer that keeps signing after the next one started is an overlap.
    #[test]
    fn interleaved_signers_overlap() {
        let f = ledger(&[("a", 1, 10), ("b", 2, 15), ("a", 1, 20), ("b", 2, 25)]);
        assert_eq!(overlaps(&tenures(f.path())).len(), 1);
    }

    /// The same node restarting its neard is two tenures, never an overlap.
    #[test]
    fn same_node_restarts_are_not_overlaps() {
        let f = ledger(&[("a", 1, 10), ("a", 3, 12), ("a", 1, 14)]);
        assert!(overlaps(&tenures(f.path())).is_empty());
    }
}
