//! `failoverd agent` refuses a bad configuration with exit 64 and
//! `failoverd: config error: <key> (<origin>): <reason>` on stderr, and a data dir
//! of another node with exit 65, before binding any port.
//!
//! Every config here listens on two ports the test itself holds bound: an agent
//! that got as far as binding would fail with exit 1 "cannot bind" (the first
//! test proves that), so exit 64 or 65 shows the error was found first.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;

use common::run_cli_env;

/// A temp dir for configs and data, plus the two ports the configs listen on,
/// held bound for the fixture's lifetime.
struct Fixture {
    dir: tempfile::TempDir,
    peer: TcpListener,
    api: TcpListener,
}

impl Fixture {
    fn new() -> Self {
        let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a test port");
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            peer: bind(),
            api: bind(),
        }
    }

    fn peer(&self) -> String {
        self.peer.local_addr().expect("addr").to_string()
    }

    fn api(&self) -> String {
        self.api.local_addr().expect("addr").to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A valid single-node config for node 1 on the held ports.
    fn good(&self) -> String {
        format!(
            "node_id = 1\nname = \"n1\"\ndata_dir = \"{data}\"\n\n[cluster]\nlisten = \"{peer}\"\n\
             initial_members = [ {{ id = 1, addr = \"{peer}\" }} ]\nheartbeat_interval = \"250ms\"\n\
             election_timeout = \"1s\"\n\n[api]\nlisten = \"{api}\"\n",
            data = self.path("data").display(),
            peer = self.peer(),
            api = self.api(),
        )
    }

    /// Writes `text` as the config file; its path.
    fn write(&self, text: &str) -> String {
        let path = self.path("failoverd.toml");
        std::fs::write(&path, text).expect("write config");
        path.display().to_string()
    }

    /// Runs `failoverd agent --config <text> <flags>` with `env`; (exit code, stderr).
    fn run(&self, text: &str, flags: &[&str], env: &[(&str, &str)]) -> (i32, String) {
        let config = self.write(text);
        let mut args = vec!["agent", "--config", config.as_str()];
        args.extend_from_slice(flags);
        let (code, _, stderr) = run_cli_env(&args, env);
        (code, stderr)
    }

    /// The origin a message gives for a value from the config file.
    fn file_origin(&self) -> String {
        format!("file {}", self.path("failoverd.toml").display())
    }
}

/// `text` with the first `from` replaced by `to`; `from` must be there.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in config:\n{text}");
    text.replacen(from, to, 1)
}

/// Asserts exit 64 and a `config error: <key> (<origin>): ` line on stderr.
fn assert_config_error((code, stderr): &(i32, String), key: &str, origin: &str) {
    assert_eq!(*code, 64, "expected exit 64 for {key}; stderr:\n{stderr}");
    let prefix = format!("failoverd: config error: {key} ({origin}): ");
    assert!(
        stderr.lines().any(|l| l.starts_with(&prefix)),
        "stderr does not start a line with {prefix:?}:\n{stderr}"
    );
}

/// The held ports are a real trap: a valid config passes every check, reaches the bind and exits 1.
#[test]
fn valid_config_on_held_ports_exits_1_cannot_bind() {
    let f = Fixture::new();
    let (code, stderr) = f.run(&f.good(), &[], &[]);
    assert_eq!(code, 1, "stderr:\n{stderr}");
    assert!(stderr.contains("cannot bind"), "{stderr}");
}

/// An unknown key is refused with its section: `[cluster] bogus` names `cluster.bogus`.
#[test]
fn unknown_key_is_named_with_its_section() {
    let f = Fixture::new();
    let text = edit(&f.good(), "[cluster]\n", "[cluster]\nbogus = 1\n");
    let out = f.run(&text, &[], &[]);
    assert_config_error(&out, "cluster.bogus", &f.file_origin());
}

/// A `cluster.listen` that is not IP:PORT is refused and named.
#[test]
fn bad_listen_address_is_named() {
    let f = Fixture::new();
    let text = edit(&f.good(), &format!("listen = \"{}\"", f.peer()), "listen = \"nope\"");
    let out = f.run(&text, &[], &[]);
    assert_config_error(&out, "cluster.listen", &f.file_origin());
    assert!(out.1.contains("\"nope\""), "{}", out.1);
}

/// A node id listed twice in `initial_members` is refused and named.
#[test]
fn duplicate_initial_member_id_is_named() {
    let f = Fixture::new();
    let text = edit(&f.good(), " ]\n", ", { id = 1, addr = \"127.0.0.1:1\" } ]\n");
    let out = f.run(&text, &[], &[]);
    assert_config_error(&out, "cluster.initial_members", &f.file_origin());
    assert!(out.1.contains("node id 1 is listed twice"), "{}", out.1);
}

/// On first start, a node_id missing from `initial_members` is refused and named.
#[test]
fn node_missing_from_initial_members_on_first_start_is_named() {
    let f = Fixture::new();
    let text = edit(&f.good(), "node_id = 1\n", "node_id = 7\n");
    let out = f.run(&text, &[], &[]);
    assert_config_error(&out, "cluster.initial_members", &f.file_origin());
    assert!(out.1.contains("node_id 7"), "{}", out.1);
}

/// A first start refused for a node_id not in `initial_members` leaves the data dir free for the corrected config.
#[test]
fn refused_first_start_does_not_claim_the_data_dir() {
    let f = Fixture::new();
    let typo = edit(&f.good(), "node_id = 1\n", "node_id = 7\n");
    assert_config_error(&f.run(&typo, &[], &[]), "cluster.initial_members", &f.file_origin());
    // Fixed: every check passes and the agent gets as far as the (held) ports.
    let (code, stderr) = f.run(&f.good(), &[], &[]);
    assert_eq!(
        (code, stderr.contains("cannot bind")),
        (1, true),
        "the corrected config was refused; the rejected first start claimed the data dir:\n{stderr}"
    );
}

/// A TLS file that does not exist is refused, naming its key and path.
#[test]
fn missing_tls_file_is_named() {
    let f = Fixture::new();
    let ca = f.path("no-such-ca.pem");
    let tls = format!(
        "[cluster.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[api]",
        ca.display(),
        f.path("no-such-cert.pem").display(),
        f.path("no-such-key.pem").display(),
    );
    let out = f.run(&edit(&f.good(), "[api]", &tls), &[], &[]);
    assert!(out.1.contains(&ca.display().to_string()), "{}", out.1);
    assert_config_error(&out, "cluster.tls.ca_file", &f.file_origin());
}

/// A data_dir that cannot be created (its parent is a regular file) is refused and named.
#[test]
fn unusable_data_dir_is_named() {
    let f = Fixture::new();
    let file = f.path("plain-file");
    std::fs::write(&file, "not a directory").expect("write file");
    let data = file.join("data");
    let text = edit(
        &f.good(),
        &format!("data_dir = \"{}\"", f.path("data").display()),
        &format!("data_dir = \"{}\"", data.display()),
    );
    let out = f.run(&text, &[], &[]);
    assert_config_error(&out, "data_dir", &f.file_origin());
    assert!(out.1.contains(&data.display().to_string()), "{}", out.1);
}

/// A config without node_id is refused and names `node_id`.
#[test]
fn missing_node_id_is_named() {
    let f = Fixture::new();
    let out = f.run(&edit(&f.good(), "node_id = 1\n", ""), &[], &[]);
    assert_config_error(&out, "node_id", &f.file_origin());
}

/// An election timeout under twice the heartbeat interval is refused and named.
#[test]
fn election_timeout_below_twice_heartbeat_is_named() {
    let f = Fixture::new();
    let text = edit(&f.good(), "election_timeout = \"1s\"", "election_timeout = \"400ms\"");
    let out = f.run(&text, &[], &[]);
    assert_config_error(&out, "cluster.election_timeout", &f.file_origin());
}

/// A duration that does not parse is refused and named.
#[test]
fn bad_duration_is_named() {
    let f = Fixture::new();
    let text = edit(
        &f.good(),
        "heartbeat_interval = \"250ms\"",
        "heartbeat_interval = \"soon\"",
    );
    let out = f.run(&text, &[], &[]);
    assert_config_error(&out, "cluster.heartbeat_interval", &f.file_origin());
    assert!(out.1.contains("\"soon\""), "{}", out.1);
}

/// A bad value from an env var is named with the env var as its origin.
#[test]
fn env_override_error_names_the_env_var() {
    let f = Fixture::new();
    let out = f.run(&f.good(), &[], &[("FAILOVERD_CLUSTER_LISTEN", "nope")]);
    assert_config_error(&out, "cluster.listen", "env FAILOVERD_CLUSTER_LISTEN");
}

/// An env var replaces the file's value: a bad file `cluster.listen` is not reported when env gives a good one.
#[test]
fn env_override_wins_over_the_file() {
    let f = Fixture::new();
    let text = edit(&f.good(), &format!("listen = \"{}\"", f.peer()), "listen = \"nope\"");
    let text = edit(&text, "election_timeout = \"1s\"", "election_timeout = \"300ms\"");
    // Without the override the file's "nope" would be reported; with it, the
    // next error in line (the election timeout) is.
    let out = f.run(&text, &[], &[("FAILOVERD_CLUSTER_LISTEN", &f.peer())]);
    assert_config_error(&out, "cluster.election_timeout", &f.file_origin());
}

/// A flag beats the env var for the same key, and an error in it names the flag.
#[test]
fn flag_beats_env_and_its_error_names_the_flag() {
    let f = Fixture::new();
    let env = [("FAILOVERD_CLUSTER_LISTEN", "from-env")];
    let out = f.run(&f.good(), &["--cluster-listen", "from-flag"], &env);
    assert_config_error(&out, "cluster.listen", "flag --cluster-listen");
    assert!(out.1.contains("from-flag") && !out.1.contains("from-env"), "{}", out.1);
    // A good flag hides a bad env value: the next error in line is reported.
    let text = edit(&f.good(), "election_timeout = \"1s\"", "election_timeout = \"300ms\"");
    let peer = f.peer();
    let out = f.run(
        &text,
        &["--cluster-listen", &peer],
        &[("FAILOVERD_CLUSTER_LISTEN", "nope")],
    );
    assert_config_error(&out, "cluster.election_timeout", &f.file_origin());
}

/// A data dir written by node 1 is refused to a config with node_id 2: exit 65, naming both ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_node_exits_65() {
    let mut cluster = common::Cluster::new(&["validator"]);
    cluster.start(0);
    cluster.wait_leader(&[0]).await;
    let (status, _) = cluster.terminate(0);
    assert!(status.success(), "node 1 did not stop cleanly: {status}");

    let f = Fixture::new();
    let text = edit(&f.good(), "node_id = 1\n", "node_id = 2\n");
    let text = edit(&text, "{ id = 1,", "{ id = 2,");
    let text = edit(
        &text,
        &format!("data_dir = \"{}\"", f.path("data").display()),
        &format!("data_dir = \"{}\"", cluster.agents[0].data_dir.display()),
    );
    let (code, stderr) = f.run(&text, &[], &[]);
    assert_eq!(code, 65, "stderr:\n{stderr}");
    assert!(
        stderr.contains("belongs to node 1") && stderr.contains("node_id 2"),
        "stderr does not name both ids:\n{stderr}"
    );
}
