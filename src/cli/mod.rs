//! The `failoverd` command line: one module per subcommand.

pub mod agent;
pub mod client;
pub mod demo;
pub mod lock;
pub mod members;
pub mod status;
pub mod tls;
pub mod validator;

use clap::Parser;
use clap::Subcommand;

/// failoverd: one validator signer at a time, decided by an embedded Raft group.
#[derive(Debug, Parser)]
#[command(name = "failoverd", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: one Raft voter (and, on validators, the neard supervisor).
    Agent(Box<agent::AgentArgs>),
    /// Show this node's view of the cluster.
    Status(status::StatusArgs),
    /// List, add or remove cluster members.
    Members(members::MembersArgs),
    /// Create TLS certificates for the cluster.
    Tls(tls::TlsArgs),
    /// Run a three-node cluster on loopback, crash its leader, and watch it recover.
    Demo(demo::DemoArgs),
    /// Run a command only while holding a lock (like `consul lock`).
    Lock(lock::LockArgs),
    /// Print who holds the validator lock (exit 1 when nobody does).
    ActiveValidator(validator::ActiveValidatorArgs),
    /// Hand the validator lock over to a standby (stop neard, release the lock).
    Handover(validator::HandoverArgs),
    /// The neard stand-in of the tests and the demo (same as the `fake-neard` binary).
    #[command(hide = true, name = "fake-neard")]
    FakeNeard {
        /// fake-neard's arguments (`--home HOME run`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command under a lease deadline (used by the agent for neard); not for direct use.
    #[command(hide = true)]
    Fence(crate::supervisor::fence::FenceArgs),
}
