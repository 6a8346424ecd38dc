//! `failoverd fence [--deadline-ns N] -- PROGRAM ARGS...`: runs neard so that
//! it dies before its lease could pass to another host, whatever happens to
//! the agent (killed, frozen, stuck).
//!
//! ```text
//!   agent ──stdin pipe──► fence ──SIGTERM/SIGKILL to the process group──► PROGRAM (neard)
//!          "deadline <ns>"      │
//!          "deadline none"      └─ SIGKILL at the first of: CLOCK_BOOTTIME >= deadline,
//!          "stop <grace_ms>"       stdin EOF or error (the agent died), `kill`, or the end
//!          "kill"                  of a `stop` grace (never later than the deadline)
//! ```
//!
//! If the fence itself dies, `PR_SET_PDEATHSIG` kills PROGRAM. SIGTERM or SIGINT
//! to the fence is a `stop` with a 10 s grace. The fence exits with PROGRAM's
//! code (128 + signal if it was killed), after killing whatever is left in
//! PROGRAM's process group. Deadlines are absolute CLOCK_BOOTTIME nanoseconds:
//! the agent runs on the same machine, so both read the same clock.
//!
//! The loop is synchronous on purpose (poll(2) on stdin and a signalfd, with a
//! timeout that ends at the deadline): no runtime, no threads, nothing that
//! could keep it from killing on time. The decisions live in [`FenceState`],
//! which takes `now` and returns what to do, so they are tested without
//! processes.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::PollFd;
use nix::poll::PollFlags;
use nix::poll::PollTimeout;
use nix::sys::signal::SigSet;
use nix::sys::signal::SigmaskHow;
use nix::sys::signal::Signal;
use nix::sys::signalfd::SfdFlags;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::Id;
use nix::sys::wait::WaitPidFlag;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

/// Grace between SIGTERM and SIGKILL when the fence itself gets SIGTERM or SIGINT.
pub const SIGNAL_GRACE: Duration = Duration::from_secs(10);
/// Exit code when the deadline had passed before PROGRAM could be started
/// (`EX_TEMPFAIL`, as `failoverd lock` after losing its lock).
pub const EXIT_DEADLINE_PASSED: i32 = 75;
/// Longest poll(2) sleep: a safety net only, since the loop also wakes at the
/// deadline, on input, on signals and on SIGCHLD.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Longer control lines are dropped (commands are a few dozen bytes).
const MAX_LINE: usize = 1024;

/// Arguments of `failoverd fence` (started by the agent, not by people; so no
/// `env`: an inherited variable must never set a deadline).
#[derive(Debug, clap::Args)]
pub struct FenceArgs {
    /// Absolute CLOCK_BOOTTIME time, in nanoseconds, at which the command is SIGKILLed
    /// unless a `deadline` line on stdin moves it. Without it: no deadline.
    #[arg(long, value_name = "NS")]
    pub deadline_ns: Option<u64>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

/// One line of the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `deadline <ns>` or `deadline none`: the new absolute deadline.
    Deadline(Option<u64>),
    /// `stop <grace_ms>`: SIGTERM now, SIGKILL after the grace.
    Stop(Duration),
    /// `kill`: SIGKILL now.
    Kill,
}

impl Control {
    /// Parses one line (without its newline); the error says what is wrong.
    pub fn parse(line: &str) -> Result<Control, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["deadline", "none"] => Ok(Control::Deadline(None)),
            ["deadline", ns] => ns
                .parse()
                .map(|ns| Control::Deadline(Some(ns)))
                .map_err(|_| format!("deadline: {ns:?} is not nanoseconds")),
            ["stop", ms] => ms
                .parse()
                .map(|ms| Control::Stop(Duration::from_millis(ms)))
                .map_err(|_| format!("stop: {ms:?} is not milliseconds")),
            ["kill"] => Ok(Control::Kill),
            _ => Err("unknown command".to_string()),
        }
    }
}

/// Why the fence SIGKILLs the process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// CLOCK_BOOTTIME reached the deadline.
    Deadline,
    /// stdin reached EOF or failed: the agent is gone.
    ChannelClosed,
    /// A `kill` line.
    Requested,
    /// The grace of a stop ended.
    GraceOver,
}

impl KillReason {
    fn describe(self) -> &'static str {
        match self {
            KillReason::Deadline => "lease deadline passed",
            KillReason::ChannelClosed => "control channel closed",
            KillReason::Requested => "kill requested",
            KillReason::GraceOver => "stop grace over",
        }
    }
}

/// What the fence must do to the process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGTERM (the start of a graceful stop).
    Term,
    /// SIGKILL.
    Kill(KillReason),
}

/// The fence's decisions; all times are CLOCK_BOOTTIME nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct FenceState {
    deadline: Option<u64>,
    /// When a stop's grace ends.
    stop_kill_at: Option<u64>,
    killed: bool,
}

impl FenceState {
    /// A fence with this deadline.
    pub fn new(deadline: Option<u64>) -> Self {
        FenceState {
            deadline,
            ..Default::default()
        }
    }

    /// Whether the group has been SIGKILLed (after which nothing changes).
    pub fn killed(&self) -> bool {
        self.killed
    }

    /// Time passes: SIGKILL once the deadline or a stop's grace is reached.
    pub fn tick(&mut self, now: u64) -> Option<Action> {
        if self.killed {
            return None;
        }
        let reason = if self.deadline.is_some_and(|d| now >= d) {
            KillReason::Deadline
        } else if self.stop_kill_at.is_some_and(|k| now >= k) {
            KillReason::GraceOver
        } else {
            return None;
        };
        self.kill(reason)
    }

    /// A control line. The old deadline is checked first: a renewal that
    /// arrives after the deadline must not save the child.
    pub fn control(&mut self, control: Control, now: u64) -> Option<Action> {
        if let Some(action) = self.tick(now) {
            return Some(action);
        }
        match control {
            Control::Deadline(deadline) => {
                self.deadline = deadline;
                self.tick(now)
            }
            Control::Stop(grace) => self.stop(grace, now),
            Control::Kill => self.kill(KillReason::Requested),
        }
    }

    /// A graceful stop: SIGTERM the first time; a later stop can only bring
    /// the SIGKILL closer. The deadline still applies.
    pub fn stop(&mut self, grace: Duration, now: u64) -> Option<Action> {
        if self.killed {
            return None;
        }
        let kill_at = now.saturating_add(u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX));
        let first = self.stop_kill_at.is_none();
        self.stop_kill_at = Some(self.stop_kill_at.map_or(kill_at, |k| k.min(kill_at)));
        match self.tick(now) {
            Some(action) => Some(action),
            None if first => Some(Action::Term),
            None => None,
        }
    }

    /// stdin reached EOF or failed.
    pub fn channel_closed(&mut self) -> Option<Action> {
        self.kill(KillReason::ChannelClosed)
    }

    /// How long until the next decision, `None` if nothing is scheduled.
    pub fn sleep(&self, now: u64) -> Option<Duration> {
        if self.killed {
            return None;
        }
        let next = [self.deadline, self.stop_kill_at].into_iter().flatten().min()?;
        Some(Duration::from_nanos(next.saturating_sub(now)))
    }

    fn kill(&mut self, reason: KillReason) -> Option<Action> {
        if self.killed {
            return None;
        }
        self.killed = true;
        Some(Action::Kill(reason))
    }
}

/// Now on CLOCK_BOOTTIME, in nanoseconds.
fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        // Cannot fail on Linux; u64::MAX makes every deadline "passed".
        Err(_) => u64::MAX,
    }
}

/// Writes `fence: ...` to stderr; a closed stderr must not stop the fence.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "fence: {}", format_args!($($arg)*));
    }};
}

/// Runs `failoverd fence`; returns the exit code.
pub fn main(args: FenceArgs) -> i32 {
    if args.deadline_ns.is_some_and(|d| monotonic_ns() >= d) {
        log!("deadline already passed, not starting {:?}", args.command[0]);
        return EXIT_DEADLINE_PASSED;
    }
    // SIGTERM, SIGINT and SIGCHLD are read from a signalfd, so they must be
    // blocked; the child gets an empty mask back in `spawn`.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(signal);
    }
    let signal_fd = match signals
        .thread_block()
        .and_then(|()| SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC))
    {
        Ok(fd) => fd,
        Err(e) => {
            log!("cannot set up signal handling: {e}");
            return 1;
        }
    };
    let mut child = match spawn(&args.command) {
        Ok(child) => child,
        Err(e) => {
            log!("cannot start {:?}: {e}", args.command[0]);
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let status = supervise(&mut child, FenceState::new(args.deadline_ns), &signal_fd);
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// Starts the command in its own process group, stdin from /dev/null (the
/// control pipe is the fence's alone), dying with the fence.
#[allow(unsafe_code)]
fn spawn(command: &[OsString]) -> std::io::Result<Child> {
    let fence = nix::unistd::getpid();
    let unblocked = SigSet::empty();
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]).stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes only raw syscalls
    // (setpgid, prctl, getppid, sigprocmask) on values prepared before the
    // fork, and neither allocates nor takes locks: converting an Errno into
    // an io::Error stores the number only.
    unsafe {
        cmd.pre_exec(move || {
            // Own process group: signals to it reach neard's children too.
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            // If the fence dies, the kernel SIGKILLs the child. (The signal
            // follows the thread that forked: the fence is single-threaded.)
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The fence may have died before prctl: then nobody would kill us.
            if nix::unistd::getppid() != fence {
                return Err(Errno::ESRCH.into());
            }
            // The fence blocks the signals it reads from its signalfd.
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&unblocked), None)?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// The control loop: until the child exits, then its status.
fn supervise(child: &mut Child, mut state: FenceState, signal_fd: &SignalFd) -> ExitStatus {
    let pid = Pid::from_raw(child.id() as i32);
    let stdin = std::io::stdin();
    let mut stdin_open = true;
    let mut pending: Vec<u8> = Vec::new();
    let mut discarding = false;
    loop {
        if exited(pid) {
            break;
        }
        let now = monotonic_ns();
        if let Some(action) = state.tick(now) {
            act(pid, action);
        }
        let sleep = state.sleep(now).map_or(MAX_SLEEP, |s| s.min(MAX_SLEEP));
        // Round up so that the loop never wakes just before the deadline.
        let millis = sleep.as_nanos().div_ceil(1_000_000);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = vec![PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                // Cannot wait for input any more: treat as a lost channel.
                log!("poll failed: {e}");
                stdin_open = false;
                if let Some(action) = state.channel_closed() {
                    act(pid, action);
                }
                continue;
            }
        }
        let signals_ready = fds[0].any().unwrap_or(true);
        let stdin_ready = stdin_open && fds.get(1).and_then(|fd| fd.any()).unwrap_or(false);
        drop(fds);
        if signals_ready {
            while let Ok(Some(info)) = signal_fd.read_signal() {
                if info.ssi_signo == Signal::SIGTERM as u32 || info.ssi_signo == Signal::SIGINT as u32 {
                    let name = Signal::try_from(info.ssi_signo as i32).map_or("a signal", |s| s.as_str());
                    log!("got {name}, stopping {pid} (grace {SIGNAL_GRACE:?})");
                    if let Some(action) = state.stop(SIGNAL_GRACE, monotonic_ns()) {
                        act(pid, action);
                    }
                }
            }
        }
        if stdin_ready {
            let mut buf = [0u8; 4096];
            match nix::unistd::read(0, &mut buf) {
                Ok(0) => stdin_open = false,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => {
                    log!("reading stdin failed: {e}");
                    stdin_open = false;
                }
            }
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if std::mem::take(&mut discarding) {
                    continue;
                }
                handle_line(&line[..end], pid, &mut state);
            }
            if pending.len() > MAX_LINE {
                if !discarding {
                    log!("ignored a control line longer than {MAX_LINE} bytes");
                }
                pending.clear();
                discarding = true;
            }
            if !stdin_open {
                if let Some(action) = state.channel_closed() {
                    act(pid, action);
                }
            }
        }
    }
    // The child is a zombie, so its pid (the group id) cannot be reused yet:
    // kill whatever it left in its group, then reap it.
    let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
    loop {
        match child.wait() {
            Ok(status) => return status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log!("waiting for {pid} failed: {e}");
                return ExitStatus::from_raw(1 << 8);
            }
        }
    }
}

/// Whether the child has exited, without reaping it.
fn exited(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match nix::sys::wait::waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => false,
        Ok(_) => true,
        // ECHILD: there is nothing left to wait for.
        Err(_) => true,
    }
}

fn handle_line(line: &[u8], pid: Pid, state: &mut FenceState) {
    let Ok(text) = std::str::from_utf8(line) else {
        log!("ignored a control line that is not UTF-8");
        return;
    };
    if text.trim().is_empty() {
        return;
    }
    match Control::parse(text) {
        Ok(control) => {
            if let Some(action) = state.control(control, monotonic_ns()) {
                act(pid, action);
            }
        }
        Err(e) => log!("ignored {:?}: {e}", text.trim()),
    }
}

/// Signals the child's process group (and for SIGKILL the child itself, in
/// case it left the group: it is not reaped yet, so its pid is still ours).
fn act(pid: Pid, action: Action) {
    match action {
        Action::Term => {
            log!("stopping {pid} (SIGTERM)");
            if nix::sys::signal::killpg(pid, Signal::SIGTERM).is_err() {
                let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            }
        }
        Action::Kill(reason) => {
            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            log!("{}, killed {pid}", reason.describe());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Every command of the protocol parses, and bad lines are errors, not panics.
    #[test]
    fn parses_the_control_protocol() {
        assert_eq!(Control::parse("deadline 123"), Ok(Control::Deadline(Some(123))));
        assert_eq!(Control::parse(" deadline none \r"), Ok(Control::Deadline(None)));
        assert_eq!(
            Control::parse("stop 200"),
            Ok(Control::Stop(Duration::from_millis(200)))
        );
        assert_eq!(Control::parse("kill"), Ok(Control::Kill));
        for bad in [
            "",
            "deadline",
            "deadline -1",
            "deadline 1 2",
            "stop",
            "stop x",
            "kill now",
            "KILL",
        ] {
            assert!(Control::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// The deadline kills exactly once, and not a nanosecond early.
    #[test]
    fn deadline_kills_once() {
        let mut s = FenceState::new(Some(100 * MS));
        assert_eq!(s.tick(100 * MS - 1), None);
        assert_eq!(s.sleep(50 * MS), Some(Duration::from_millis(50)));
        assert_eq!(s.tick(100 * MS), Some(Action::Kill(KillReason::Deadline)));
        assert_eq!(s.tick(200 * MS), None);
        assert_eq!(s.control(Control::Kill, 200 * MS), None);
    }

    /// A renewal read after the deadline passed does not save the child.
    #[test]
    fn late_renewal_still_kills() {
        let mut s = FenceState::new(Some(100 * MS));
        let action = s.control(Control::Deadline(Some(500 * MS)), 101 * MS);
        assert_eq!(action, Some(Action::Kill(KillReason::Deadline)));
    }

    /// Deadlines move both ways and can be removed.
    #[test]
    fn deadline_moves_and_clears() {
        let mut s = FenceState::new(Some(100 * MS));
        assert_eq!(s.control(Control::Deadline(Some(300 * MS)), 50 * MS), None);
        assert_eq!(s.tick(200 * MS), None);
        assert_eq!(s.control(Control::Deadline(None), 200 * MS), None);
        assert_eq!(s.sleep(200 * MS), None);
        assert_eq!(s.tick(10_000 * MS), None);
        let action = s.control(Control::Deadline(Some(5_000 * MS)), 10_000 * MS);
        assert_eq!(action, Some(Action::Kill(KillReason::Deadline)));
    }

    /// A stop sends SIGTERM once and SIGKILLs at the end of the shortest grace, or at the deadline.
    #[test]
    fn stop_is_bounded_by_grace_and_deadline() {
        let mut s = FenceState::new(None);
        assert_eq!(
            s.control(Control::Stop(Duration::from_millis(200)), 0),
            Some(Action::Term)
        );
        assert_eq!(s.control(Control::Stop(Duration::from_secs(10)), 10 * MS), None);
        assert_eq!(s.sleep(10 * MS), Some(Duration::from_millis(190)));
        assert_eq!(s.tick(200 * MS), Some(Action::Kill(KillReason::GraceOver)));

        let mut s = FenceState::new(Some(300 * MS));
        assert_eq!(s.stop(Duration::from_secs(10), 0), Some(Action::Term));
        assert_eq!(s.control(Control::Deadline(Some(60_000 * MS)), 100 * MS), None);
        assert_eq!(s.tick(9_999 * MS), None);
        assert_eq!(s.control(Control::Deadline(Some(150 * MS)), 120 * MS), None);
        assert_eq!(s.tick(150 * MS), Some(Action::Kill(KillReason::Deadline)));
    }

    /// Losing the channel kills at once, even without a deadline.
    #[test]
    fn closed_channel_kills() {
        let mut s = FenceState::new(None);
        assert_eq!(s.channel_closed(), Some(Action::Kill(KillReason::ChannelClosed)));
        assert!(s.killed());
        assert_eq!(s.channel_closed(), None);
    }
}
