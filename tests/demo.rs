//! `failoverd demo` (the README's first command) runs to the end: exit 0, and
//! the ledger shows no overlapping signers.

use std::process::Command;

/// The demo exits 0 and reports zero overlapping signers.
#[test]
fn demo_exits_zero_with_no_overlap() {
    let out = Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .arg("demo")
        .output()
        .expect("run failoverd demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed: {:?}", out.status);
    let overlap = stdout
        .lines()
        .find(|l| l.contains("overlapping signers"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert_eq!(overlap, Some(0), "the summary reports the overlap count");
}
