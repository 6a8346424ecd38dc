//! OS signals, mapped in one place.

use tokio::signal::unix::signal;
use tokio::signal::unix::SignalKind;

/// Resolves on SIGTERM or SIGINT, with the signal's name.
pub async fn shutdown() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process can only be killed; wait forever.
        std::future::pending::<()>().await;
        return "none";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
