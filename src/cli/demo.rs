//! `failoverd demo`: a three-node cluster on loopback, a leader crash, a
//! re-election, a rejoin, and a summary. Needs no config and no root.

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;

use crate::local_cluster::LocalCluster;
use crate::raft::Role;

/// Arguments of `failoverd demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Leave the cluster running at the end and print how to talk to it.
    #[arg(long)]
    keep: bool,
}

/// How long the demo waits for anything before calling it a failure.
const PATIENCE: Duration = Duration::from_secs(30);
/// Keys written before and after the crash.
const KEYS: usize = 10;

/// Runs the demo; fails if any step does not happen as it should.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bin = std::env::current_exe().context("locating the failoverd binary")?;
    let roles = [Role::Validator, Role::Validator, Role::Arbiter];
    let mut cluster = LocalCluster::create(bin, &roles, |_| String::new()).context("creating the demo cluster")?;
    let t0 = Instant::now();
    let say = |msg: String| println!("[{:>5.1}s] {msg}", t0.elapsed().as_secs_f64());
    println!(
        "failoverd demo: 2 validators + 1 arbiter on 127.0.0.1, files in {}",
        cluster.root.display()
    );

    say("starting validator-a, validator-b and arbiter".into());
    for i in 0..3 {
        cluster.start(i)?;
    }
    let all = [0, 1, 2];
    let leader = cluster
        .wait_leader(&all, PATIENCE)
        .await
        .context("the cluster did not elect a leader")?;
    let status = registered(&cluster, leader).await?;
    say(format!(
        "cluster formed: leader {} (term {}), cluster id {}",
        cluster.nodes[leader].name,
        status.term,
        status.cluster_id.as_deref().unwrap_or("(pending)")
    ));
    println!();
    print!("{}", super::status::render(&status));
    println!();

    let mut written = Vec::new();
    for k in 0..KEYS {
        let key = format!("demo/{k}");
        cluster.put(leader, &key, "before").await.map_err(anyhow::Error::msg)?;
        written.push(key);
    }
    say(format!(
        "wrote {KEYS} keys through the leader, each acknowledged once committed"
    ));

    say(format!("kill -9 {} (the Raft leader)", cluster.nodes[leader].name));
    cluster.kill9(leader);
    let killed_at = Instant::now();
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = cluster
        .wait_leader(&survivors, PATIENCE)
        .await
        .context("no new leader after the crash")?;
    let reelection = killed_at.elapsed();
    say(format!(
        "new leader: {} after {:.2} s",
        cluster.nodes[new_leader].name,
        reelection.as_secs_f64()
    ));
    for k in KEYS..2 * KEYS {
        let key = format!("demo/{k}");
        cluster
            .put(new_leader, &key, "after")
            .await
            .map_err(anyhow::Error::msg)?;
        written.push(key);
    }
    say(format!("wrote {KEYS} more keys with one node down"));

    say(format!("restarting {} on its data dir", cluster.nodes[leader].name));
    cluster.start(leader)?;
    let (index, digest) = converge(&cluster, &all).await?;
    say(format!(
        "all three nodes at applied index {index}, state digest {digest}"
    ));

    let mut lost = 0;
    for i in all {
        let http = reqwest::Client::new();
        for key in &written {
            let url = format!("http://{}/v1/kv/{key}", cluster.nodes[i].api);
            let ok = http
                .get(url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            lost += usize::from(!ok);
        }
    }

    println!();
    println!("summary");
    println!(
        "  re-election after kill -9 of the leader: {:.2} s",
        reelection.as_secs_f64()
    );
    println!("  acknowledged writes: {}, missing on some node: {lost}", written.len());
    if lost > 0 {
        bail!("{lost} acknowledged writes are missing");
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

/// Waits until node `i` sees every member's name and role; returns its status.
async fn registered(cluster: &LocalCluster, i: usize) -> anyhow::Result<crate::raft::node::NodeStatus> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = cluster.status(i).await {
            if s.members.len() == cluster.nodes.len() && s.members.iter().all(|m| m.role.is_some()) {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            bail!("members did not register their names");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node reports the same applied index and digest.
async fn converge(cluster: &LocalCluster, among: &[usize]) -> anyhow::Result<(u64, String)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut seen = Vec::new();
        for &i in among {
            if let Some(s) = cluster.status(i).await {
                seen.push((s.applied_index.unwrap_or(0), s.state_digest));
            }
        }
        if seen.len() == among.len() && seen.iter().all(|s| *s == seen[0]) {
            return Ok(seen[0].clone());
        }
        if Instant::now() > deadline {
            bail!("nodes did not converge: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
