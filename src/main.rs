//! The `failoverd` binary: parse the command line, set up logging, run.

use clap::CommandFactory;
use clap::FromArgMatches;
use failoverd::cli::Cli;
use failoverd::cli::Command;
use failoverd::config::ArgSource;

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_tracing();
    let code = match cli.command {
        Command::Agent(args) => {
            let sources = Sources(matches.subcommand_matches("agent").cloned());
            failoverd::cli::agent::main(*args, &sources)
        }
        Command::Status(args) => edge(async { failoverd::cli::status::run(args).await }),
        Command::Members(args) => edge(async { failoverd::cli::members::run(args).await }),
        Command::Tls(args) => report(failoverd::cli::tls::run(args)),
        Command::Demo(args) => edge(async { failoverd::cli::demo::run(args).await }),
        Command::Lock(args) => failoverd::cli::lock::main(args),
        Command::ActiveValidator(args) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt
                .block_on(failoverd::cli::validator::active_validator(args))
                .unwrap_or_else(|e| {
                    eprintln!("failoverd: {e:#}");
                    2
                }),
            Err(e) => report(Err(e.into())),
        },
        Command::Handover(args) => edge(async { failoverd::cli::validator::handover(args).await }),
        Command::FakeNeard { args } => {
            let argv = std::iter::once("fake-neard".to_string()).chain(args).collect();
            failoverd::fake_neard::run_with_args(argv)
        }
        Command::Fence(args) => failoverd::supervisor::fence::main(args),
    };
    std::process::exit(code);
}

/// Logs go to stderr; `RUST_LOG` overrides the default filter.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a client subcommand on a small runtime.
fn edge(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> i32 {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => report(rt.block_on(fut)),
        Err(e) => report(Err(e.into())),
    }
}

fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("failoverd: {e:#}");
            1
        }
    }
}

/// Where a config override came from, from clap's matches.
struct Sources(Option<clap::ArgMatches>);

impl ArgSource for Sources {
    fn source(&self, id: &str) -> Option<String> {
        let source = self.0.as_ref()?.value_source(id)?;
        match source {
            clap::parser::ValueSource::CommandLine => Some(format!("flag --{}", id.replace('_', "-"))),
            clap::parser::ValueSource::EnvVariable => Some(format!("env FAILOVERD_{}", id.to_uppercase())),
            _ => None,
        }
    }
}
