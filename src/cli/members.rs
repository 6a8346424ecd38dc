//! `failoverd members [add|remove]`: cluster membership.

use std::time::Duration;

use super::client;
use crate::raft::node::MemberStatus;
use crate::raft::NodeId;

/// Arguments of `failoverd members`.
#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    #[command(flatten)]
    api: client::ApiArgs,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

/// A membership change.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    /// Start it first with an empty data dir and no initial_members.
    Add {
        /// The new node's node_id.
        #[arg(long)]
        id: NodeId,
        /// The new node's advertised HOST:PORT.
        #[arg(long)]
        addr: String,
    },
    /// Remove a node (alive or dead) from the cluster.
    Remove {
        /// The node_id to remove.
        id: NodeId,
    },
}

/// Runs the subcommand against the local agent.
pub async fn run(args: MembersArgs) -> anyhow::Result<()> {
    let base = args.api.api.trim_end_matches('/').to_string();
    let members: Vec<MemberStatus> = match args.action {
        None => {
            client::send(
                client::http(Duration::from_secs(5))?.get(format!("{base}/v1/members")),
                "members",
            )
            .await?
        }
        Some(Action::Add { id, addr }) => {
            // Catching up may take a while on a big log.
            let http = client::http(Duration::from_secs(150))?;
            let req = http
                .post(format!("{base}/v1/members"))
                .json(&serde_json::json!({ "id": id, "addr": addr }));
            client::send(req, "members add").await?
        }
        Some(Action::Remove { id }) => {
            let http = client::http(Duration::from_secs(30))?;
            client::send(http.delete(format!("{base}/v1/members/{id}")), "members remove").await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&members)?);
    } else {
        print!("{}", super::status::members_table(&members));
    }
    Ok(())
}
