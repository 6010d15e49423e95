//! Service managers: how an instance's haproxy and stunnel are started, reloaded and
//! stopped. Two implementations, chosen by `instances.service_manager`:
//!
//! - [`DirectManager`]: the agent runs the daemons itself, detached (they daemonise into
//!   their own session), so an agent restart, even `kill -9`, leaves them serving; a new
//!   agent adopts them from their pid files. haproxy runs in master-worker mode with a
//!   master CLI socket; a reload is `SIGUSR2` to the master, confirmed through the CLI's
//!   reload and failure counters, and drops no connection. stunnel reloads on `SIGHUP`
//!   (new certificates, no dropped connection; used when only files changed) and is
//!   restarted when its configuration changed (a reload could leave it without a
//!   listener when a new address is taken).
//! - [`SystemdManager`]: the template units `haproxy@<id>` and `stunnel@<id>` shipped in
//!   `systemd/`, driven through `systemctl`.
//!
//! Every operation returns the daemon's output, for the API's response body.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::ids::InstanceId;
use super::store::{Daemon, InstanceStore, process_is, running_pid};

/// What a daemon operation printed, or why it failed (with what it printed).
pub type OpResult = Result<String, String>;

pub trait ServiceManager: Send + Sync + 'static {
    /// The daemon's main pid when it runs.
    fn pid(&self, id: &InstanceId, daemon: Daemon) -> Option<u32>;
    /// Starts the daemon on its rendered configuration.
    fn start(&self, id: &InstanceId, daemon: Daemon) -> OpResult;
    /// Graceful reload: new files, no dropped connection.
    fn reload(&self, id: &InstanceId, daemon: Daemon) -> OpResult;
    /// Stop, then start on the current rendered configuration.
    fn restart(&self, id: &InstanceId, daemon: Daemon) -> OpResult;
    /// Stops the daemon; stopping a stopped daemon succeeds.
    fn stop(&self, id: &InstanceId, daemon: Daemon) -> OpResult;
}

/// Paths of the rendered files a daemon runs with, shared by both managers and the units.
pub fn rendered_config(store: &InstanceStore, id: &InstanceId, daemon: Daemon) -> PathBuf {
    store.run_dir(id).join(daemon.config_file())
}

pub fn master_socket(store: &InstanceStore, id: &InstanceId) -> PathBuf {
    store.run_dir(id).join("haproxy-master.sock")
}

fn output_file(store: &InstanceStore, id: &InstanceId, daemon: Daemon) -> PathBuf {
    store.run_dir(id).join(format!("{}.out", daemon.name()))
}

/// Programs and timings of the direct manager.
#[derive(Debug, Clone)]
pub struct DirectManager {
    pub store: InstanceStore,
    pub haproxy_bin: PathBuf,
    pub stunnel_bin: PathBuf,
    /// How long a start, reload or stop may take before it counts as failed.
    pub timeout: Duration,
    /// This program, for the socket hand-off to stunnel (`exec-listening`).
    pub self_exe: PathBuf,
}

impl DirectManager {
    fn bin(&self, daemon: Daemon) -> &Path {
        match daemon {
            Daemon::Haproxy => &self.haproxy_bin,
            Daemon::Stunnel => &self.stunnel_bin,
        }
    }

    /// The command that runs `argv` for an instance: as the instance's own user when its
    /// run directory belongs to one (the agent, as root, isolates daemons), through
    /// `setpriv` with no supplementary group and only the capability to bind privileged
    /// ports; else as the agent.
    fn command(&self, id: &InstanceId, argv: &[std::ffi::OsString]) -> Command {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(self.store.run_dir(id))
            .map(|m| m.uid())
            .ok()
            .filter(|uid| *uid != 0 && nix::unistd::geteuid().is_root());
        match owner {
            Some(uid) => {
                let mut cmd = crate::process::command_as(uid, &argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
            None => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
        }
    }

    fn wait_until(&self, mut done: impl FnMut() -> bool) -> bool {
        poll_until(self.timeout, || done().then_some(())).is_some()
    }

    fn start_process(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        let store = &self.store;
        let config = rendered_config(store, id, daemon);
        let pid_file = store.pid_file(id, daemon);
        let out_path = output_file(store, id, daemon);
        // The daemon keeps this as its stderr after detaching: later reload messages land
        // here too, so it is appended to, never truncated under a running daemon.
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(|e| format!("{}: {e}", out_path.display()))?;
        let offset = out.seek(SeekFrom::End(0)).unwrap_or(0);
        let mut argv: Vec<std::ffi::OsString> = vec![self.bin(daemon).into()];
        match daemon {
            Daemon::Haproxy => {
                argv.extend(["-W".into(), "-D".into(), "-f".into(), config.into()]);
                argv.extend(["-p".into(), pid_file.clone().into(), "-S".into()]);
                argv.push(master_socket(store, id).into());
            }
            Daemon::Stunnel => {
                let rendered = std::fs::read_to_string(&config).unwrap_or_default();
                match super::render::stunnel_listen_sockets(&rendered) {
                    // Through the socket hand-off, so that reloads keep the listeners.
                    Some(addrs) if !addrs.is_empty() => {
                        let mut handoff: Vec<std::ffi::OsString> =
                            vec![self.self_exe.clone().into(), "exec-listening".into()];
                        for a in addrs {
                            handoff.extend(["--listen".into(), a.to_string().into()]);
                        }
                        handoff.push("--".into());
                        argv.splice(0..0, handoff);
                        argv.push(config.into());
                    }
                    _ => argv.push(config.into()),
                }
            }
        }
        let mut cmd = self.command(id, &argv);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out.try_clone().map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin(daemon).display()))?;
        // It detaches and exits; one that stays in the foreground (an included
        // `foreground = yes`) is killed at the operation timeout, never waited for.
        let status = wait_within(child, self.timeout);
        let _ = out.flush();
        let output = read_from(&out_path, offset, daemon);
        let status = match status {
            Some(status) => status,
            None => {
                return Err(format!(
                    "{} did not detach within instances.operation_timeout ({} ms); stopped\n{output}",
                    daemon.name(),
                    self.timeout.as_millis()
                ));
            }
        };
        if !status.success() {
            return Err(format!("{} exited with {status}\n{output}", daemon.name()));
        }
        if !self.wait_until(|| running_pid(&pid_file, daemon.name()).is_some()) {
            return Err(format!("{} did not stay up\n{output}", daemon.name()));
        }
        if daemon == Daemon::Haproxy
            && !self.wait_until(|| {
                master_status(&master_socket(store, id)).is_some_and(|s| s.workers > 0)
            })
        {
            return Err(format!("haproxy started no worker\n{output}"));
        }
        let pid = running_pid(&pid_file, daemon.name()).unwrap_or(0);
        Ok(format!("{} started (pid {pid})\n{output}", daemon.name())
            .trim_end()
            .to_string())
    }

    fn reload_haproxy(&self, id: &InstanceId) -> OpResult {
        let Some(pid) = self.pid(id, Daemon::Haproxy) else {
            return self.start(id, Daemon::Haproxy);
        };
        let out_path = output_file(&self.store, id, Daemon::Haproxy);
        let offset = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
        let confirmed =
            confirm_haproxy_reload(&master_socket(&self.store, id), self.timeout, || {
                kill(Pid::from_raw(pid as i32), Signal::SIGUSR2)
                    .map_err(|e| format!("cannot signal haproxy: {e}"))
            });
        let output = read_from(&out_path, offset, Daemon::Haproxy);
        match confirmed {
            Ok(()) => Ok(format!("haproxy reloaded (pid {pid})\n{output}")
                .trim_end()
                .to_string()),
            Err(e) => Err(format!("{e}\n{output}")),
        }
    }
}

/// Triggers an haproxy reload with `trigger` and waits until the master CLI reports it:
/// its reload counter moved on with a worker running (success), or its failure counter
/// moved on (the old workers keep serving the old configuration).
pub fn confirm_haproxy_reload(
    socket: &Path,
    timeout: Duration,
    trigger: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let before = master_status(socket).ok_or("the haproxy master CLI does not answer")?;
    trigger()?;
    poll_until(timeout, || {
        let after = master_status(socket)?;
        if after.failed > before.failed {
            Some(Err("haproxy reload failed".to_string()))
        } else if after.reloads > before.reloads && after.workers > 0 {
            Some(Ok(()))
        } else {
            None
        }
    })
    .unwrap_or_else(|| Err("haproxy reload not confirmed in time".into()))
}

/// Waits for `child` to exit for up to `timeout`; past it kills the child and returns
/// `None`.
fn wait_within(
    mut child: std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let status = poll_until(timeout, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

pub use crate::process::poll_until;

impl DirectManager {
    /// `SIGHUP`: stunnel re-reads its configuration and certificates, keeps its
    /// listeners, and keeps the old configuration if the new one fails. The check
    /// afterwards is that it is alive and every `accept` address still takes connections.
    fn reload_stunnel(&self, id: &InstanceId) -> OpResult {
        let Some(pid) = self.pid(id, Daemon::Stunnel) else {
            return self.start(id, Daemon::Stunnel);
        };
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP)
            .map_err(|e| format!("cannot signal stunnel: {e}"))?;
        std::thread::sleep(Duration::from_millis(100));
        if !process_is(pid, "stunnel") {
            return Err(format!("stunnel (pid {pid}) exited after SIGHUP"));
        }
        let rendered = std::fs::read_to_string(rendered_config(&self.store, id, Daemon::Stunnel))
            .unwrap_or_default();
        for addr in super::render::stunnel_accept_addresses(&rendered) {
            let listening = self.wait_until(|| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            });
            if !listening {
                return Err(format!("stunnel no longer accepts on {addr} after SIGHUP"));
            }
        }
        Ok(format!("stunnel reloaded (pid {pid})"))
    }
}

impl ServiceManager for DirectManager {
    fn pid(&self, id: &InstanceId, daemon: Daemon) -> Option<u32> {
        running_pid(&self.store.pid_file(id, daemon), daemon.name())
    }

    fn start(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        if let Some(pid) = self.pid(id, daemon) {
            return Ok(format!("{} already running (pid {pid})", daemon.name()));
        }
        self.start_process(id, daemon)
    }

    fn reload(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        match daemon {
            Daemon::Haproxy => self.reload_haproxy(id),
            Daemon::Stunnel => self.reload_stunnel(id),
        }
    }

    fn restart(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        let stopped = self.stop(id, daemon)?;
        let started = self.start_process(id, daemon)?;
        Ok(format!("{stopped}\n{started}"))
    }

    fn stop(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        let pid_file = self.store.pid_file(id, daemon);
        let Some(pid) = running_pid(&pid_file, daemon.name()) else {
            let _ = std::fs::remove_file(&pid_file);
            return Ok(format!("{} not running", daemon.name()));
        };
        let target = Pid::from_raw(pid as i32);
        let _ = kill(target, Signal::SIGTERM);
        if !self.wait_until(|| !process_is(pid, daemon.name())) {
            let _ = kill(target, Signal::SIGKILL);
            if !self.wait_until(|| !process_is(pid, daemon.name())) {
                return Err(format!("{} (pid {pid}) does not stop", daemon.name()));
            }
        }
        let _ = std::fs::remove_file(&pid_file);
        Ok(format!("{} daemon {id} killed (pid {pid}).", daemon.name()))
    }
}

/// Longest a helper command (`haproxy -c`, `ip`) may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `program` with `args` (no input) to completion: Ok with what it printed (stdout
/// then stderr, trimmed) on success, Err with it otherwise; killed after
/// [`COMMAND_TIMEOUT`].
pub fn run_captured<S: AsRef<std::ffi::OsStr>>(program: &Path, args: &[S]) -> OpResult {
    run_captured_within(program, args, COMMAND_TIMEOUT)
}

/// [`run_captured`], killed (and an error) after `timeout`.
pub fn run_captured_within<S: AsRef<std::ffi::OsStr>>(
    program: &Path,
    args: &[S],
    timeout: Duration,
) -> OpResult {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(|e| format!("{}: {e}", program.display()))?,
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = rx.recv();
            return Err(format!(
                "{} did not finish within {} ms; killed",
                program.display(),
                timeout.as_millis()
            ));
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text.trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// What haproxy's master CLI says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterStatus {
    pub reloads: u64,
    pub failed: u64,
    pub workers: usize,
}

/// Asks the master CLI `show proc`.
pub fn master_status(socket: &Path) -> Option<MasterStatus> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"show proc\n").ok()?;
    // The master CLI keeps the connection open; a response ends with an empty line.
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.ends_with(b"\n\n") && data.len() < 1 << 20 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    parse_show_proc(&String::from_utf8_lossy(&data))
}

/// Parses `show proc`: the master line carries `<reloads> [failed: N]`; current workers
/// are listed under `# workers` (old ones, still draining, under `# old workers`).
pub fn parse_show_proc(text: &str) -> Option<MasterStatus> {
    let mut status = None;
    let mut section = "";
    for line in text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('#') {
            section = if header.trim_start().starts_with("workers") {
                "workers"
            } else if header.trim_start().starts_with("old workers") {
                "old"
            } else {
                ""
            };
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "master", reloads, "[failed:", failed, ..] => {
                status = Some(MasterStatus {
                    reloads: reloads.parse().ok()?,
                    failed: failed.trim_end_matches(']').parse().ok()?,
                    workers: 0,
                });
            }
            [_, "worker", ..] if section == "workers" => {
                if let Some(s) = status.as_mut() {
                    s.workers += 1;
                }
            }
            _ => {}
        }
    }
    status
}

/// Daemon output since `offset`, without stunnel's debug chatter, bounded.
fn read_from(path: &Path, offset: u64, daemon: Daemon) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.take(256 * 1024).read_to_string(&mut text);
    }
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            daemon != Daemon::Stunnel
                || l.starts_with("[!]")
                || l.starts_with("[.] Binding")
                || l.starts_with("applianced")
        })
        .collect();
    let joined = kept.join("\n");
    // Keep the end, where the failure is, within 8 KiB.
    let mut start = joined.len().saturating_sub(8192);
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    joined[start..].to_string()
}

/// Drives `haproxy@<id>` and `stunnel@<id>` through systemctl.
#[derive(Debug, Clone)]
pub struct SystemdManager {
    pub systemctl: PathBuf,
    /// For the master CLI socket the `haproxy@` unit opens in the run directory.
    pub store: InstanceStore,
    pub timeout: Duration,
}

impl SystemdManager {
    fn unit(id: &InstanceId, daemon: Daemon) -> String {
        format!("{}@{id}.service", daemon.name())
    }

    fn systemctl(&self, args: &[&str]) -> OpResult {
        run_captured_within(&self.systemctl, args, self.timeout)
    }

    /// `systemctl VERB UNIT`, reported as "UNIT DONE" plus its output.
    fn unit_verb(&self, id: &InstanceId, daemon: Daemon, verb: &str, done: &str) -> OpResult {
        let unit = Self::unit(id, daemon);
        self.systemctl(&[verb, &unit])
            .map(|o| format!("{unit} {done}\n{o}").trim().to_string())
    }

    fn with_journal(&self, id: &InstanceId, daemon: Daemon, result: OpResult) -> OpResult {
        result.map_err(|e| {
            let status = self
                .systemctl(&[
                    "status",
                    "--no-pager",
                    "--lines=20",
                    &Self::unit(id, daemon),
                ])
                .unwrap_or_else(|e| e);
            format!("{e}\n{status}")
        })
    }
}

impl ServiceManager for SystemdManager {
    fn pid(&self, id: &InstanceId, daemon: Daemon) -> Option<u32> {
        let out = self
            .systemctl(&[
                "show",
                "--property=MainPID",
                "--value",
                &Self::unit(id, daemon),
            ])
            .ok()?;
        out.trim().parse().ok().filter(|p| *p != 0)
    }

    fn start(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        self.with_journal(id, daemon, self.unit_verb(id, daemon, "start", "started"))
    }

    fn reload(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        let unit = Self::unit(id, daemon);
        let socket = master_socket(&self.store, id);
        let r = match daemon {
            // systemctl only says the signal was sent; the master CLI says how it went.
            Daemon::Haproxy if socket.exists() => {
                let mut out = String::new();
                confirm_haproxy_reload(&socket, self.timeout, || {
                    out = self.systemctl(&["reload", &unit])?;
                    Ok(())
                })
                .map(|()| format!("{unit} reloaded\n{out}").trim().to_string())
            }
            _ => self.unit_verb(id, daemon, "reload-or-restart", "reloaded"),
        };
        self.with_journal(id, daemon, r)
    }

    fn restart(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        self.with_journal(
            id,
            daemon,
            self.unit_verb(id, daemon, "restart", "restarted"),
        )
    }

    fn stop(&self, id: &InstanceId, daemon: Daemon) -> OpResult {
        self.unit_verb(id, daemon, "stop", "stopped")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_command_that_hangs_is_killed_at_its_timeout() {
        let started = Instant::now();
        let r = run_captured_within(Path::new("sleep"), &["30"], Duration::from_millis(300));
        assert!(r.unwrap_err().contains("did not finish"));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            run_captured_within(Path::new("echo"), &["hi"], Duration::from_secs(5)).unwrap(),
            "hi"
        );
    }

    #[test]
    fn show_proc_counts() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
10205           master          1 [failed: 0]   0d00h00m02s     2.6.12\n\
# workers\n\
10256           worker          0               0d00h00m01s     2.6.12\n\
# old workers\n\
10206           worker          1               0d00h00m03s     2.6.12\n\
# programs\n";
        assert_eq!(
            parse_show_proc(text),
            Some(MasterStatus {
                reloads: 1,
                failed: 0,
                workers: 1
            })
        );
        assert_eq!(parse_show_proc("garbage"), None);
    }

    #[test]
    fn systemd_manager_drives_systemctl() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\ncase \"$1\" in show) echo 4242;; start) [ \"$2\" = \"stunnel@00000000-0000-0000-0000-000000000bad.service\" ] && {{ echo boom >&2; exit 1; }};; esac\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let m = SystemdManager {
            systemctl: fake,
            store: InstanceStore::new(dir.path(), &dir.path().join("run")),
            timeout: Duration::from_secs(1),
        };
        let id = InstanceId::parse("00000000-0000-0000-0000-000000000001").unwrap();
        assert_eq!(m.pid(&id, Daemon::Haproxy), Some(4242));
        assert!(m.start(&id, Daemon::Haproxy).is_ok());
        assert!(m.reload(&id, Daemon::Haproxy).is_ok());
        assert!(m.restart(&id, Daemon::Stunnel).is_ok());
        assert!(m.stop(&id, Daemon::Stunnel).is_ok());
        let bad = InstanceId::parse("00000000-0000-0000-0000-000000000bad").unwrap();
        let err = m.start(&bad, Daemon::Stunnel).unwrap_err();
        assert!(err.contains("boom"), "{err}");
        let calls = std::fs::read_to_string(&log).unwrap();
        let expected = [
            "show --property=MainPID --value haproxy@00000000-0000-0000-0000-000000000001.service",
            "start haproxy@00000000-0000-0000-0000-000000000001.service",
            "reload-or-restart haproxy@00000000-0000-0000-0000-000000000001.service",
            "restart stunnel@00000000-0000-0000-0000-000000000001.service",
            "stop stunnel@00000000-0000-0000-0000-000000000001.service",
            "start stunnel@00000000-0000-0000-0000-000000000bad.service",
        ];
        for e in expected {
            assert!(calls.contains(e), "{e} missing from {calls}");
        }
    }
}
