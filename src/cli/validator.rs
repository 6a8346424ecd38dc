//! `failoverd active-validator` and `failoverd handover`: the operator's view
//! of, and hand on, the validator lock.

use std::time::Duration;

use super::client;

/// Arguments of `failoverd active-validator`.
#[derive(Debug, clap::Args)]
pub struct ActiveValidatorArgs {
    #[command(flatten)]
    api: client::ApiArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `failoverd handover`.
#[derive(Debug, clap::Args)]
pub struct HandoverArgs {
    #[command(flatten)]
    api: client::ApiArgs,
    /// Leave this node (by name) a short window to take the lock first.
    #[arg(long)]
    to: Option<String>,
    /// Hand over even if no synced standby is ready.
    #[arg(long)]
    force: bool,
}

/// Prints who holds the validator lock; exit 0, or 1 when nobody does.
pub async fn active_validator(args: ActiveValidatorArgs) -> anyhow::Result<i32> {
    let http = client::http(Duration::from_secs(5))?;
    let url = format!("{}/v1/active-validator", args.api.api.trim_end_matches('/'));
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the agent: {e}"))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        eprintln!("No active validator");
        return Ok(1);
    }
    let body: serde_json::Value = resp.error_for_status()?.json().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        println!("Name: {}", body["Name"].as_str().unwrap_or(""));
        println!("Node: {}", body["Node"]);
    }
    Ok(0)
}

/// Asks this node's supervisor to hand the validator lock over.
pub async fn handover(args: HandoverArgs) -> anyhow::Result<()> {
    let http = client::http(Duration::from_secs(130))?;
    let url = format!("{}/v1/handover", args.api.api.trim_end_matches('/'));
    let body = serde_json::json!({ "to": args.to, "force": args.force });
    let reply: serde_json::Value = client::send(http.post(url).json(&body), "handover").await?;
    println!("{}", reply["result"].as_str().unwrap_or("done"));
    Ok(())
}
