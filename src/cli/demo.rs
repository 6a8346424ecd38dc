//! `failoverd demo`: two validator agents running fake-neard and an arbiter,
//! on loopback in a temp dir. Shows who validates, crashes the validating
//! agent with SIGKILL, shows the takeover and the signing gap, restarts it,
//! hands over gracefully, and checks from the signature ledger that two nodes
//! never signed at once. Needs no config and no root.

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;

use crate::ledger;
use crate::local_cluster::LocalCluster;
use crate::raft::Role;

/// Arguments of `failoverd demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Leave the cluster running at the end and print how to talk to it.
    #[arg(long)]
    keep: bool,
    /// The validator session TTL (the other lease timings follow from it).
    #[arg(long, default_value = "6s")]
    session_ttl: String,
}

/// How long the demo waits for anything before calling it a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs the demo; fails if any step does not happen as it should.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bin = std::env::current_exe().context("locating the failoverd binary")?;
    let roles = [Role::Validator, Role::Validator, Role::Arbiter];
    let mut cluster =
        LocalCluster::create(bin.clone(), &roles, |_| String::new()).context("creating the demo cluster")?;
    // neard is `failoverd fake-neard`, behind a one-line script the supervisor can exec.
    let fake = cluster.root.join("fake-neard");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nexec '{}' fake-neard \"$@\"\n", bin.display()),
    )?;
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let lock = format!("[lock]\nsession_ttl = \"{}\"\n", args.session_ttl);
    cluster
        .with_neard(&fake, &lock)
        .context("setting up fake-neard homes")?;
    let t0 = Instant::now();
    let say = |msg: String| println!("[{:>5.1}s] {msg}", t0.elapsed().as_secs_f64());
    println!(
        "failoverd demo: 2 validators (fake-neard) + 1 arbiter on 127.0.0.1, session_ttl {}",
        args.session_ttl
    );
    println!("files in {}\n", cluster.root.display());

    say("starting validator-a, validator-b and arbiter".into());
    for i in 0..3 {
        cluster.start(i)?;
    }
    let first = validating(&cluster, None).await?;
    say(format!(
        "{} holds the validator lock and signs; the other validator is a synced standby",
        cluster.nodes[first].name
    ));
    show_signing(&cluster, &say, 3).await;

    say(format!(
        "kill -9 {}'s agent (its fence kills its neard at once)",
        cluster.nodes[first].name
    ));
    cluster.kill9(first);
    let second = validating(&cluster, Some(first)).await?;
    wait_signing(&cluster, &cluster.nodes[second].name).await?;
    let crash_gap = last_gap(&cluster);
    say(format!(
        "{} took over; signing gap {:.2} s",
        cluster.nodes[second].name, crash_gap
    ));

    say(format!(
        "restarting {}: it rejoins as a standby",
        cluster.nodes[first].name
    ));
    cluster.start(first)?;
    wait_state(&cluster, first, "Voting").await?;
    say(format!("{} is a synced standby again", cluster.nodes[first].name));

    say(format!(
        "graceful handover from {} (`failoverd handover`)",
        cluster.nodes[second].name
    ));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    // The standby announces itself within a renew or two (a lock-delay after
    // its previous session, at most); until then the holder refuses.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let resp = http
            .post(format!("http://{}/v1/handover", cluster.nodes[second].api))
            .send()
            .await?;
        if resp.status().is_success() {
            break;
        }
        let why = resp.text().await.unwrap_or_default();
        if !why.contains("no synced standby") || Instant::now() > deadline {
            bail!("handover refused: {why}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    validating(&cluster, Some(second)).await?;
    wait_signing(&cluster, &cluster.nodes[first].name).await?;
    let handover_gap = last_gap(&cluster);
    say(format!(
        "{} validates again; signing gap {:.2} s",
        cluster.nodes[first].name, handover_gap
    ));
    show_signing(&cluster, &say, 2).await;

    let tenures = ledger::tenures(&cluster.ledger());
    let overlaps = ledger::overlaps(&tenures);
    println!("\nsummary");
    println!("  tenures (signing processes): {}", tenures.len());
    for t in &tenures {
        println!("    {:<12} pid {:<7} {} signatures", t.node, t.pid, t.signatures);
    }
    println!("  promotions: {}", tenures.len());
    println!("  gap after kill -9 of the validating agent: {crash_gap:.2} s");
    println!("  gap after a graceful handover:             {handover_gap:.2} s");
    println!("  overlapping signers (must be 0):            {}", overlaps.len());
    if !overlaps.is_empty() {
        bail!("two nodes signed at the same time: {overlaps:?}");
    }
    if args.keep {
        cluster.keep = true;
        println!("\nthe cluster keeps running (files in {}):", cluster.root.display());
        for n in &cluster.nodes {
            println!("  failoverd status --api http://{}    # {} ({})", n.api, n.name, n.role);
        }
        println!("stop it with: pkill -f {}", cluster.root.display());
    }
    Ok(())
}

/// The supervisor state of node `i`, if it answers.
async fn state(cluster: &LocalCluster, i: usize) -> Option<String> {
    let url = format!("http://{}/v1/status", cluster.nodes[i].api);
    let status: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    status
        .pointer("/supervisor/state")
        .and_then(|s| s.as_str())
        .map(str::to_string)
}

async fn wait_state(cluster: &LocalCluster, i: usize, want: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while state(cluster, i).await.as_deref() != Some(want) {
        if Instant::now() > deadline {
            bail!("{} never reached {want}", cluster.nodes[i].name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits for a validator other than `not` to be Validating; returns it.
async fn validating(cluster: &LocalCluster, not: Option<usize>) -> anyhow::Result<usize> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for i in [0, 1].into_iter().filter(|i| Some(*i) != not) {
            if state(cluster, i).await.as_deref() == Some("Validating") {
                return Ok(i);
            }
        }
        if Instant::now() > deadline {
            bail!("no validator took the lock");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_signing(cluster: &LocalCluster, node: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while ledger::tenures(&cluster.ledger()).last().is_none_or(|t| t.node != node) {
        if Instant::now() > deadline {
            bail!("{node} never signed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The gap before the latest tenure, in seconds.
fn last_gap(cluster: &LocalCluster) -> f64 {
    let tenures = ledger::tenures(&cluster.ledger());
    ledger::gaps(&tenures).last().map_or(0.0, |(_, _, ns)| *ns as f64 / 1e9)
}

/// Prints who signs, once a second, for `secs` seconds.
async fn show_signing(cluster: &LocalCluster, say: &impl Fn(String), secs: u64) {
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(t) = ledger::tenures(&cluster.ledger()).last() {
            say(format!(
                "  signing: {} (pid {}, {} blocks so far)",
                t.node, t.pid, t.signatures
            ));
        }
    }
}
