//! `failoverd fence` as a real process: it kills its child at the lease
//! deadline, at once when its control pipe closes, and on command; the child's
//! own children die with it; exit codes pass through.

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::ChildStdin;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tempfile::TempDir;

/// Upper bound for anything that should happen "at once" or "at the deadline".
const SLACK: Duration = Duration::from_secs(5);

fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

fn ns_from_now(d: Duration) -> u64 {
    monotonic_ns() + d.as_nanos() as u64
}

/// A running `failoverd fence -- sh -c SCRIPT` in its own temp dir (the
/// script's working directory), with stderr in `dir/fence.log`.
struct Fence {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: TempDir,
}

impl Fence {
    fn start(deadline: Option<u64>, script: &str) -> Fence {
        Fence::start_with(deadline, script, Stdio::piped())
    }

    fn start_with(deadline: Option<u64>, script: &str, stdin: Stdio) -> Fence {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("fence.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_failoverd"));
        cmd.arg("fence");
        if let Some(ns) = deadline {
            cmd.arg("--deadline-ns").arg(ns.to_string());
        }
        cmd.args(["--", "sh", "-c", script])
            .current_dir(dir.path())
            .stdin(stdin)
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn failoverd fence");
        let stdin = child.stdin.take();
        Fence { child, stdin, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(line.as_bytes()).expect("write to fence");
        stdin.flush().expect("flush");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("fence.log")).unwrap_or_default()
    }

    /// Waits for the file the script writes when it is ready.
    fn wait_file(&mut self, name: &str) -> String {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(self.path(name)) {
                if text.ends_with('\n') {
                    return text.trim().to_string();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fence exited ({status}) before {name} appeared; log:\n{}", self.log());
            }
            assert!(start.elapsed() < SLACK, "{name} did not appear; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status, or `None` if still running after `timeout`.
    fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status, failing the test if the fence lives longer than `SLACK`.
    fn exit(&mut self) -> ExitStatus {
        match self.wait_for(SLACK) {
            Some(status) => status,
            None => panic!("fence still running after {SLACK:?}; log:\n{}", self.log()),
        }
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        // SIGKILL to the fence also kills its child (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the process is gone (a zombie counts: it can no longer run).
fn gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ")" that ends the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => true,
    }
}

fn wait_gone(pid: i32) {
    let start = Instant::now();
    while !gone(pid) {
        assert!(start.elapsed() < SLACK, "process {pid} still alive");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// A deadline 300 ms ahead SIGKILLs the child at the deadline: not before, and not much after.
#[test]
fn deadline_kills_child() {
    let start = Instant::now();
    let mut fence = Fence::start(Some(ns_from_now(Duration::from_millis(300))), "exec sleep 30");
    let status = fence.exit();
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "killed early, after {elapsed:?}");
    assert_eq!(status.code(), Some(128 + 9), "exit code of a SIGKILLed child");
    assert!(
        fence.log().contains("fence: lease deadline passed, killed"),
        "{}",
        fence.log()
    );
}

/// Moving the deadline forward again and again keeps the child alive past the first deadline.
#[test]
fn extended_deadline_keeps_child_alive() {
    let first = Duration::from_millis(1000);
    let start = Instant::now();
    let mut fence = Fence::start(Some(ns_from_now(first)), "echo ready > ready; exec sleep 30");
    while start.elapsed() < first * 5 / 2 {
        fence.send(&format!("deadline {}\n", ns_from_now(first)));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        fence.wait_for(Duration::ZERO),
        None,
        "killed despite renewals; log:\n{}",
        fence.log()
    );
    fence.wait_file("ready");
    fence.send("kill\n");
    assert_eq!(fence.exit().code(), Some(137));
}

/// Closing the control pipe (the agent died) kills the child at once, even without a deadline.
#[test]
fn closed_control_pipe_kills_child() {
    let mut fence = Fence::start(None, "echo $$ > pid; exec sleep 30");
    fence.wait_file("pid");
    let child = read_pid(&fence.path("pid"));
    let closed = Instant::now();
    drop(fence.stdin.take());
    assert_eq!(fence.exit().code(), Some(137));
    assert!(closed.elapsed() < SLACK);
    assert!(gone(child));
    assert!(
        fence.log().contains("fence: control channel closed, killed"),
        "{}",
        fence.log()
    );
}

/// SIGKILL of the writing agent process closes the pipe: the child dies at once.
#[test]
fn killed_agent_kills_child() {
    let mut agent = Command::new("sh")
        .args(["-c", "exec sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh");
    let pipe = agent.stdout.take().expect("agent stdout");
    let mut fence = Fence::start_with(None, "echo ready > ready; exec sleep 30", Stdio::from(pipe));
    fence.wait_file("ready");
    agent.kill().expect("kill agent");
    agent.wait().expect("reap agent");
    assert_eq!(fence.exit().code(), Some(137));
}

/// A frozen agent (SIGSTOP of the writer: the pipe stays open, nothing is written) cannot keep the child past the deadline.
#[test]
fn frozen_agent_cannot_extend() {
    let deadline = ns_from_now(Duration::from_millis(500));
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let script = format!("echo deadline {deadline}; echo sent > sent; exec sleep 30");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .current_dir(agent_dir.path())
        .stdout(Stdio::piped());
    let mut agent = cmd.spawn().expect("sh");
    let pipe = agent.stdout.take().expect("agent stdout");
    let mut fence = Fence::start_with(None, "exec sleep 30", Stdio::from(pipe));
    let start = Instant::now();
    while !agent_dir.path().join("sent").exists() {
        assert!(start.elapsed() < SLACK, "the agent did not write its deadline");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGSTOP).expect("SIGSTOP agent");
    let status = fence.exit();
    assert!(monotonic_ns() >= deadline, "killed before the deadline");
    assert_eq!(status.code(), Some(137));
    assert!(
        fence.log().contains("fence: lease deadline passed, killed"),
        "{}",
        fence.log()
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

/// `stop` sends SIGTERM first: a child that handles it exits on its own, with its own code.
#[test]
fn stop_sends_sigterm_first() {
    let script = "trap 'echo term > marker; exit 3' TERM; echo ready > ready; sleep 30 & wait";
    let mut fence = Fence::start(None, script);
    fence.wait_file("ready");
    fence.send("stop 5000\n");
    assert_eq!(fence.exit().code(), Some(3));
    assert_eq!(fence.wait_file("marker"), "term");
}

/// `stop 200` SIGKILLs a child that ignores SIGTERM once the 200 ms grace is over.
#[test]
fn stop_kills_after_grace() {
    let mut fence = Fence::start(None, "trap '' TERM; echo ready > ready; sleep 30 & wait");
    fence.wait_file("ready");
    let stopped = Instant::now();
    fence.send("stop 200\n");
    let status = fence.exit();
    assert!(
        stopped.elapsed() >= Duration::from_millis(200),
        "killed before the grace ended"
    );
    assert_eq!(status.code(), Some(137));
    assert!(
        fence.log().contains("fence: stop grace over, killed"),
        "{}",
        fence.log()
    );
}

/// A stop's grace never runs past the deadline.
#[test]
fn stop_grace_is_bounded_by_deadline() {
    let deadline = ns_from_now(Duration::from_millis(500));
    let mut fence = Fence::start(Some(deadline), "trap '' TERM; echo ready > ready; sleep 30 & wait");
    fence.wait_file("ready");
    fence.send("stop 60000\n");
    let status = fence.exit();
    assert!(monotonic_ns() >= deadline);
    assert_eq!(status.code(), Some(137));
    assert!(
        fence.log().contains("fence: lease deadline passed, killed"),
        "{}",
        fence.log()
    );
}

/// SIGTERM to the fence itself becomes a graceful stop of the child.
#[test]
fn sigterm_to_fence_stops_child() {
    let script = "trap 'echo term > marker; exit 4' TERM; echo ready > ready; sleep 30 & wait";
    let mut fence = Fence::start(None, script);
    fence.wait_file("ready");
    kill(Pid::from_raw(fence.child.id() as i32), Signal::SIGTERM).expect("SIGTERM fence");
    assert_eq!(fence.exit().code(), Some(4));
    assert_eq!(fence.wait_file("marker"), "term");
}

/// The child's own children are in its process group and die with it.
#[test]
fn grandchildren_die_too() {
    let mut fence = Fence::start(
        Some(ns_from_now(Duration::from_millis(300))),
        "sleep 30 & echo $! > pid; wait",
    );
    fence.wait_file("pid");
    let grandchild = read_pid(&fence.path("pid"));
    assert!(!gone(grandchild));
    assert_eq!(fence.exit().code(), Some(137));
    wait_gone(grandchild);
}

/// When the child exits on its own, what it left running in its group is killed.
#[test]
fn leftovers_are_killed_on_exit() {
    let mut fence = Fence::start(None, "sleep 30 & echo $! > pid; exit 0");
    let status = fence.exit();
    assert_eq!(status.code(), Some(0));
    wait_gone(read_pid(&fence.path("pid")));
}

/// If the fence itself is SIGKILLed, the kernel kills the child (PR_SET_PDEATHSIG).
#[test]
fn fence_death_kills_child() {
    let mut fence = Fence::start(None, "echo $$ > pid; exec sleep 30");
    fence.wait_file("pid");
    let child = read_pid(&fence.path("pid"));
    fence.child.kill().expect("SIGKILL fence");
    fence.child.wait().expect("reap fence");
    wait_gone(child);
}

/// The child's exit code passes through, and death by a signal becomes 128 + signal.
#[test]
fn exit_code_passes_through() {
    assert_eq!(Fence::start(None, "exit 42").exit().code(), Some(42));
    assert_eq!(Fence::start(None, "exit 0").exit().code(), Some(0));
    assert_eq!(Fence::start(None, "kill -USR1 $$").exit().code(), Some(128 + 10));
}

/// A program that cannot be started gives 127 and a deadline already passed starts nothing.
#[test]
fn refuses_to_start() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_failoverd"));
    let status = cmd
        .args(["fence", "--", "/nonexistent/neard"])
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(127));

    let past = monotonic_ns() - 1;
    let mut fence = Fence::start(Some(past), "echo started > marker");
    assert_eq!(fence.exit().code(), Some(75));
    assert!(!fence.path("marker").exists());
}

/// Garbage on stdin is logged and ignored; valid commands after it still work.
#[test]
fn garbage_lines_are_ignored() {
    let mut fence = Fence::start(None, "echo ready > ready; exec sleep 30");
    fence.wait_file("ready");
    fence.send("hello\n\ndeadline abc\nstop\nstop -5\ndeadline 1 2\nkill now\n");
    fence.stdin.as_mut().unwrap().write_all(b"\xff\xfe\n").unwrap();
    fence.send(&format!("{}\n", "x".repeat(10_000)));
    assert_eq!(
        fence.wait_for(Duration::from_millis(300)),
        None,
        "garbage killed the child; log:\n{}",
        fence.log()
    );
    fence.send("kill\n");
    assert_eq!(fence.exit().code(), Some(137));
    let log = fence.log();
    assert!(log.contains("fence: ignored \"hello\""), "{log}");
    assert!(log.contains("longer than"), "{log}");
    assert!(log.contains("fence: kill requested, killed"), "{log}");
}

/// `deadline none` removes the deadline: the child outlives the one it was started with.
#[test]
fn deadline_none_removes_deadline() {
    let mut fence = Fence::start(
        Some(ns_from_now(Duration::from_millis(2000))),
        "echo ready > ready; exec sleep 30",
    );
    fence.send("deadline none\n");
    fence.wait_file("ready");
    assert_eq!(
        fence.wait_for(Duration::from_millis(2500)),
        None,
        "killed; log:\n{}",
        fence.log()
    );
    fence.send("kill\n");
    assert_eq!(fence.exit().code(), Some(137));
}
