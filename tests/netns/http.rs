//! HTTP from inside a host's namespace: the test process stays in the root
//! namespace, so each request is one `ip netns exec <ns> curl ...`, bounded by
//! curl's `--max-time` and, should curl hang anyway, by a timeout that kills it.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

/// Status and body of an HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `method url` (with `body`, if any) sent from inside namespace `ns`, answered
/// within `timeout` or an error.
pub async fn request(
    ns: &str,
    method: &str,
    url: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Reply, String> {
    let max_time = format!("{:.3}", timeout.as_secs_f64());
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "--silent", "--show-error", "--globoff"])
        // Test traffic goes to the test hosts only, never through a proxy.
        .args(["--noproxy", "*", "--connect-timeout", "2", "--max-time", &max_time])
        .args(["--request", method, "--write-out", "\n%{http_code}"]);
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(url)
        .stdin(if body.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = async {
        let mut child = cmd.spawn().map_err(|e| format!("curl in {ns}: {e}"))?;
        if let (Some(text), Some(mut stdin)) = (body, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| format!("curl stdin: {e}"))?;
        }
        child.wait_with_output().await.map_err(|e| format!("curl in {ns}: {e}"))
    };
    let out = tokio::time::timeout(timeout + Duration::from_secs(3), run)
        .await
        .map_err(|_| format!("{method} {url} from {ns}: curl did not finish"))??;
    if !out.status.success() {
        return Err(format!(
            "{method} {url} from {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code
        .trim()
        .parse()
        .map_err(|_| format!("{method} {url} from {ns}: no status in {text:?}"))?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}
