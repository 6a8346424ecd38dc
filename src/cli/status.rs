//! `failoverd status`: this node's view of the cluster, as a table or JSON.

use std::fmt::Write;
use std::time::Duration;

use super::client;
use crate::raft::node::MemberStatus;
use crate::raft::node::NodeStatus;
use crate::supervisor::status::SupervisorStatus;

/// Arguments of `failoverd status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    api: client::ApiArgs,
    /// Print the raw JSON of /v1/status.
    #[arg(long)]
    json: bool,
}

/// Fetches and prints the status.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let http = client::http(Duration::from_secs(5))?;
    let url = format!("{}/v1/status", args.api.api.trim_end_matches('/'));
    let status: serde_json::Value = client::send(http.get(url), "status").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let mut out = String::new();
    if status.get("node_id").is_some() {
        let node: NodeStatus = serde_json::from_value(status.clone())?;
        out.push_str(&render(&node));
    } else {
        let _ = writeln!(
            out,
            "node     {} ({})",
            status["name"].as_str().unwrap_or(""),
            status["role"].as_str().unwrap_or("")
        );
        let _ = writeln!(
            out,
            "lock     consul at {}",
            status["consul_url"].as_str().unwrap_or("")
        );
    }
    if let Some(sup) = status.get("supervisor") {
        if let Ok(sup) = serde_json::from_value::<SupervisorStatus>(sup.clone()) {
            out.push('\n');
            out.push_str(&render_supervisor(&sup));
        }
    }
    print!("{out}");
    Ok(())
}

/// The supervisor's part of the status.
pub fn render_supervisor(s: &SupervisorStatus) -> String {
    let mut out = String::new();
    let holder = match (&s.holder, &s.holder_session) {
        (Some(h), Some(_)) => format!("{} (node {}, LockIndex {})", h.name, h.node_id, s.lock_index),
        _ => "nobody".to_string(),
    };
    let _ = writeln!(out, "validator  state {}, lock holder {holder}", s.state.as_str());
    let _ = writeln!(out, "key        {}", s.key);
    if let Some(ms) = s.lease_remaining_ms {
        let _ = writeln!(
            out,
            "lease      {:.1} s left before the fence kills neard",
            ms as f64 / 1000.0
        );
    }
    let pid = s.neard_pid.map_or("-".to_string(), |p| p.to_string());
    let _ = writeln!(
        out,
        "neard      pid {pid}, {}",
        if s.neard_health.is_empty() {
            "health unknown"
        } else {
            &s.neard_health
        }
    );
    let _ = writeln!(
        out,
        "counters   promotions {}, neard restarts {}",
        s.promotions, s.neard_restarts
    );
    for warning in &s.exposed_keys {
        let _ = writeln!(out, "WARNING    {warning}");
    }
    out
}

/// The human-readable form.
pub fn render(s: &NodeStatus) -> String {
    let mut out = String::new();
    let leader = match s.leader_id {
        Some(id) => {
            let name = s
                .members
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.name.as_str())
                .unwrap_or("");
            format!("{id} {name}")
        }
        None => "none".to_string(),
    };
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let _ = writeln!(out, "node     {} {} ({})", s.node_id, s.name, s.role);
    let _ = writeln!(
        out,
        "raft     {}, term {}, leader {}",
        s.raft_state,
        s.term,
        leader.trim_end()
    );
    let _ = writeln!(
        out,
        "log      last {}, applied {}, snapshot {}",
        opt(s.last_log_index),
        opt(s.applied_index),
        opt(s.snapshot_index)
    );
    let _ = writeln!(
        out,
        "cluster  {}",
        s.cluster_id.as_deref().unwrap_or("(not formed yet)")
    );
    let _ = writeln!(out, "digest   {}", s.state_digest);
    let _ = writeln!(out);
    out.push_str(&members_table(&s.members));
    out
}

/// Members as an aligned table.
pub fn members_table(members: &[MemberStatus]) -> String {
    let mut rows = vec![["ID", "NAME", "ADDRESS", "ROLE", "VOTER", "LEADER", "LAST CONTACT"].map(String::from)];
    for m in members {
        rows.push([
            m.id.to_string(),
            if m.name.is_empty() {
                "-".to_string()
            } else {
                m.name.clone()
            },
            m.addr.clone(),
            m.role.map_or("-".to_string(), |r| r.to_string()),
            if m.voter { "voter" } else { "learner" }.to_string(),
            if m.leader { "*" } else { "" }.to_string(),
            m.last_contact_ms.map_or("never".to_string(), |ms| format!("{ms}ms")),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
