//! `failoverd agent`: check the config, then run the agent until SIGTERM/SIGINT.
//!
//! Exit codes: 0 after a clean shutdown, 64 for a bad config (before any port
//! is bound), 65 for a data dir that cannot be trusted, 1 for anything else.

use crate::agent::Agent;
use crate::agent::Exit;
use crate::config;
use crate::config::ConfigArgs;
use crate::config::EXIT_CONFIG;

/// Arguments of `failoverd agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Runs the agent; returns the process exit code.
pub fn main(args: AgentArgs, sources: &dyn config::ArgSource) -> i32 {
    let prepared = config::load(&args.config, sources)
        .map_err(|e| Exit {
            code: EXIT_CONFIG,
            message: format!("config error: {e}"),
        })
        .and_then(crate::agent::prepare);
    let prepared = match prepared {
        Ok(p) => p,
        Err(Exit { code, message }) => {
            eprintln!("failoverd: {message}");
            return code;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("failoverd: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(prepared)) {
        Ok(()) => 0,
        Err(Exit { code, message }) => {
            tracing::error!("{message}");
            eprintln!("failoverd: {message}");
            code
        }
    }
}

async fn run(prepared: crate::agent::Prepared) -> Result<(), Exit> {
    let mut agent = Agent::start(prepared).await?;
    let outcome = tokio::select! {
        signal = crate::signal::shutdown() => {
            tracing::info!(signal, "shutting down");
            Ok(())
        }
        failure = agent.failed() => Err(Exit { code: 1, message: failure }),
    };
    agent.stop().await;
    outcome
}
