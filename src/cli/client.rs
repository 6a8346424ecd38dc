//! A small client of the local HTTP API, shared by the operator subcommands.

use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Default address of a local agent's API.
pub const DEFAULT_API: &str = "http://127.0.0.1:2233";

/// Where the agent's API is.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the agent's HTTP API.
    #[arg(long, global = true, env = "FAILOVERD_API_URL", default_value = DEFAULT_API)]
    pub api: String,
}

/// Sends `req` and decodes a JSON reply, turning `{"error": ...}` into an error.
pub async fn send<T: DeserializeOwned>(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<T> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach the agent"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("{what}: reading the reply"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        anyhow::bail!("{what}: {status}: {message}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{what}: unexpected reply"))
}

/// An HTTP client with a total timeout per request.
pub fn http(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .context("building the HTTP client")
}
