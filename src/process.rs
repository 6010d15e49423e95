//! Process helpers both roles use: the agent for haproxy and stunnel, the controller's
//! `process` backend for appliance agents.

use std::time::{Duration, Instant};

/// A command that runs `program` as user and group `id` (no supplementary group), keeping
/// only the capability to bind privileged ports, through util-linux's `setpriv`; the
/// caller (root) adds the program's arguments.
pub fn command_as(id: u32, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let argv = setpriv_argv(id);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).arg(program);
    cmd
}

/// `setpriv` and its arguments as [`command_as`] runs them, for a command line that
/// puts other wrappers first; the program comes next.
pub fn setpriv_argv(id: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={id}"),
        format!("--regid={id}"),
        "--clear-groups".into(),
        "--inh-caps=-all,+net_bind_service".into(),
        "--ambient-caps=+net_bind_service".into(),
        "--".into(),
    ]
}

/// The state letter of process `pid` (`R`, `S`, `Z` for one that has exited and only
/// waits to be reaped, ...), `None` when there is no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// Calls `probe` every 10 ms until it gives an answer or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(answer) = probe() {
            return Some(answer);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
