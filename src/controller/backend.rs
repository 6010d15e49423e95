//! The `process` compute backend: an appliance is an `applianced agent` process on its
//! own loopback address, with its own directory (configuration, certificates, state,
//! runtime files, log) under `STATE/appliances/<id>/`, and the real haproxy and stunnel
//! its instances need. Agents run in their own process group, so they outlive a
//! controller that dies, and are adopted again (through `agent.pid`) when it returns.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::controller::FlavorConfig;
use crate::controller::fleet::ids::ApplianceId;
use crate::controller::fleet::ports::{
    Backend, BackendError, Capabilities, Catalogue, CatalogueEntry, Join, MachineAction,
    MachineSpec, MachineState, Region,
};
use crate::controller::netns::Netns;
use crate::fsutil::{ensure_dir, write_atomic};

pub struct ProcessBackend {
    pub root: PathBuf,
    /// Runtime directories, one per slot (`RUN_ROOT/<slot>`): short, because haproxy's
    /// master socket lives there and Unix socket paths are limited to ~100 bytes.
    pub run_root: PathBuf,
    pub binary: PathBuf,
    pub first_address: IpAddr,
    /// Its first slot: slots are numbered across the controller's backends, so that
    /// appliances' user ids and runtime directories never meet. Its appliances hold
    /// `slot_base .. slot_base + max_appliances`.
    pub slot_base: u32,
    pub max_appliances: u32,
    pub agent_port: u16,
    pub controller_url: String,
    pub controller_ca: PathBuf,
    /// The controller's CA: agents accept clients (the controller) and replacement
    /// certificates issued by it.
    pub ca_cert: PathBuf,
    pub crl: PathBuf,
    pub heartbeat_interval: Duration,
    /// The first of the appliances' own user and group ids (one per slot), when the
    /// controller runs as root and isolates them; `None`: agents run as the controller.
    pub appliance_ids: Option<u32>,
    /// Where appliances are placed (the configuration's, or one `local` region).
    pub regions: Vec<Region>,
    /// The flavors: limits put on an appliance's processes (none configured: one
    /// `default` flavor without limits).
    pub flavors: Vec<FlavorConfig>,
    /// The `netns` backend: each appliance in its own network namespace on this
    /// bridge and subnet (instead of a loopback address).
    pub netns: Option<Netns>,
}

/// The flavor of appliances when none is configured: no limits.
const DEFAULT_FLAVOR: &str = "default";

/// Time an agent gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl ProcessBackend {
    /// The management address of a slot, or `None` beyond the configured range.
    pub fn address(&self, slot: i64) -> Option<IpAddr> {
        let slot = u32::try_from(slot).ok()?.checked_sub(self.slot_base)?;
        if slot >= self.max_appliances {
            return None;
        }
        if let Some(netns) = &self.netns {
            return netns.address(slot).map(IpAddr::V4);
        }
        match self.first_address {
            IpAddr::V4(a) => u32::from(a)
                .checked_add(slot)
                .map(|n| IpAddr::V4(n.into()))
                .filter(|ip| ip.is_loopback()),
            IpAddr::V6(a) => u128::from(a)
                .checked_add(u128::from(slot))
                .map(|n| IpAddr::V6(n.into())),
        }
    }

    /// The user and group id of the appliance in `slot`, when appliances are isolated.
    pub fn appliance_uid(&self, slot: i64) -> Option<u32> {
        let first = self.appliance_ids?;
        first.checked_add(u32::try_from(slot).ok()?)
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The slot an appliance holds: its runtime directory's name.
    fn slot_of(&self, id: &str) -> Option<u32> {
        fs::read_link(self.dir(id).join("run"))
            .ok()?
            .file_name()?
            .to_str()?
            .parse()
            .ok()
    }

    /// The appliance's slot among this backend's own (its addresses and namespaces are
    /// numbered so).
    fn local_slot(&self, id: &str) -> Option<u32> {
        self.slot_of(id)?.checked_sub(self.slot_base)
    }

    fn config_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("agent.toml")
    }

    /// Writes the appliance's certificate, key and agent configuration (idempotent).
    /// Installs the appliance's key pair: its public key, one line, in
    /// `APPLIANCE_DIR/authorized_keys` (readable by the appliance's group); without one,
    /// no such file.
    fn install_key(&self, id: &str, key: Option<&str>) -> io::Result<()> {
        let path = self.dir(id).join("authorized_keys");
        match key {
            Some(key) => write_atomic(&path, format!("{key}\n").as_bytes(), 0o640),
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    fn provision(
        &self,
        id: &str,
        spec: &MachineSpec<'_>,
        (slot, address, issued): (i64, IpAddr, &crate::pki::Issued),
    ) -> io::Result<()> {
        let dir = self.dir(id);
        ensure_dir(&self.root, 0o750)?;
        ensure_dir(&dir, 0o750)?;
        ensure_dir(&self.run_root, 0o750)?;
        let run = self.run_root.join(slot.to_string());
        // Left over from a deleted appliance that held the slot before.
        if run.exists() && fs::read_link(dir.join("run")).ok().as_deref() != Some(run.as_path()) {
            fs::remove_dir_all(&run)?;
        }
        ensure_dir(&run, 0o750)?;
        let link = dir.join("run");
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&run, &link)?;
        }
        ensure_dir(&dir.join("tls"), 0o700)?;
        write_atomic(&dir.join("tls/agent.key"), issued.key_pem.as_bytes(), 0o600)?;
        write_atomic(
            &dir.join("tls/agent.crt"),
            issued.chain_pem().as_bytes(),
            0o644,
        )?;
        let listen = std::net::SocketAddr::new(address, self.agent_port);
        let q = |p: &Path| toml_string(&p.display().to_string());
        let config = format!(
            "# Written by the applianced controller for appliance {id}.\n\
             appliance_id = {id_q}\n\
             state_dir = {state}\n\
             run_dir = {run}\n\n\
             [server]\n\
             listen = [{listen_q}]\n\
             cert = {cert}\n\
             key = {key}\n\
             client_ca = {ca}\n\
             server_ca = {ca}\n\
             crl = [{crl}]\n\
             allowed_clients = [{controller_cn}]\n\n\
             [controller]\n\
             url = {url}\n\
             ca = {controller_ca}\n\
             heartbeat_interval = \"{hb}ms\"\n",
            id_q = toml_string(id),
            state = q(&dir.join("state")),
            run = q(&run),
            listen_q = toml_string(&listen.to_string()),
            cert = q(&dir.join("tls/agent.crt")),
            key = q(&dir.join("tls/agent.key")),
            ca = q(&self.ca_cert),
            crl = q(&self.crl),
            controller_cn = toml_string(super::ca::CONTROLLER_CN),
            url = toml_string(&self.controller_url),
            controller_ca = q(&self.controller_ca),
            hb = self.heartbeat_interval.as_millis(),
        );
        write_atomic(&self.config_path(id), config.as_bytes(), 0o640)?;
        write_atomic(
            &dir.join("flavor"),
            format!("{}\n", spec.flavor).as_bytes(),
            0o644,
        )?;
        self.install_key(id, spec.authorized_key)?;
        if let Some(uid) = self.appliance_uid(slot) {
            self.give_to(id, &run, uid)?;
        }
        Ok(())
    }

    /// Hands an isolated appliance what its agent needs: its state, runtime and TLS
    /// directories and its key become its own; its directory and configuration stay the
    /// controller's (readable by the appliance's group, so it cannot rewrite them).
    fn give_to(&self, id: &str, run: &Path, uid: u32) -> io::Result<()> {
        use std::os::unix::fs::{PermissionsExt, chown};
        let dir = self.dir(id);
        let state = dir.join("state");
        ensure_dir(&state, 0o700)?;
        chown(&dir, Some(0), Some(uid))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750))?;
        chown(self.config_path(id), Some(0), Some(uid))?;
        let key = dir.join("authorized_keys");
        if key.exists() {
            chown(&key, Some(0), Some(uid))?;
        }
        for owned in [
            state,
            run.to_path_buf(),
            dir.join("tls"),
            dir.join("tls/agent.key"),
            dir.join("tls/agent.crt"),
        ] {
            chown(&owned, Some(uid), Some(uid))?;
        }
        Ok(())
    }

    /// The uid an appliance's agent runs as (the owner of its state directory).
    fn owner(&self, id: &str) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        self.appliance_ids?;
        fs::metadata(self.dir(id).join("state"))
            .ok()
            .map(|m| m.uid())
            .filter(|uid| *uid != 0)
    }

    /// The running agent of an appliance: the pid in `agent.pid`, if that process is
    /// alive and is this appliance's agent.
    pub fn pid(&self, id: &str) -> Option<i32> {
        let text = fs::read_to_string(self.dir(id).join("agent.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = self.config_path(id);
        let wanted = config.as_os_str().as_encoded_bytes();
        let is_ours = cmdline.split(|b| *b == 0).any(|arg| arg == wanted);
        // A zombie still has its cmdline until reaped; it is not running.
        (is_ours && !is_zombie(pid)).then_some(pid)
    }

    /// The wrappers that apply the appliance's flavor (recorded in its directory) to
    /// what it runs: `prlimit` for memory and descriptors, `nice` for CPU; none for a
    /// flavor without limits, or an appliance made before flavors were recorded.
    fn limits(&self, id: &str) -> Result<Vec<String>, BackendError> {
        let path = self.dir(id).join("flavor");
        let name = match fs::read_to_string(&path) {
            Ok(name) => name.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(at(&path)(e).into()),
        };
        let flavor = match self.flavors.iter().find(|f| f.name == name) {
            Some(f) => f,
            None if name.is_empty() || name == DEFAULT_FLAVOR => return Ok(Vec::new()),
            None => {
                return Err(BackendError::Failed(format!(
                    "the appliance's flavor {name:?} is not configured ([[flavors]])"
                )));
            }
        };
        let mut argv = Vec::new();
        let rlimits: Vec<String> = [
            flavor
                .memory_mb
                .map(|mb| format!("--data={}", u64::from(mb) * 1024 * 1024)),
            flavor.open_files.map(|n| format!("--nofile={n}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !rlimits.is_empty() {
            argv.push("prlimit".to_string());
            argv.extend(rlimits);
            argv.push("--".into());
        }
        if let Some(n) = flavor.cpu_nice.filter(|n| *n > 0) {
            argv.extend(["nice".into(), "-n".into(), n.to_string(), "--".into()]);
        }
        Ok(argv)
    }

    /// Starts the appliance's agent unless it already runs; returns its pid.
    fn start(&self, id: &str) -> Result<i32, BackendError> {
        if let Some(pid) = self.pid(id) {
            return Ok(pid);
        }
        let dir = self.dir(id);
        let log_path = dir.join("agent.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(at(&log_path))?;
        // Its flavor's limits first (prlimit and nice run the rest: the limits hold for
        // the agent and, inherited, for its daemons); then an isolated appliance's agent
        // runs as its own user, without groups, keeping only the capability to bind
        // privileged ports (for its daemons).
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        // In its own network namespace first (entering one needs the controller's
        // privileges).
        if let Some(netns) = &self.netns {
            let slot = self.local_slot(id).ok_or_else(|| {
                BackendError::Failed(format!("appliance {id} has no slot on this host"))
            })?;
            let ns = netns.ensure_namespace(slot).map_err(BackendError::Failed)?;
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(Into::into));
        }
        argv.extend(self.limits(id)?.into_iter().map(Into::into));
        if let Some(uid) = self.owner(id) {
            argv.extend(
                crate::process::setpriv_argv(uid)
                    .into_iter()
                    .map(Into::into),
            );
        }
        argv.push(self.binary.clone().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.arg("agent")
            .arg("--config")
            .arg(self.config_path(id))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(&dir);
        for var in [
            "JOURNAL_STREAM",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
        ] {
            cmd.env_remove(var);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| {
            BackendError::Failed(format!("cannot run {}: {e}", self.binary.display()))
        })?;
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        write_atomic(&dir.join("agent.pid"), format!("{pid}\n").as_bytes(), 0o644)?;
        // Reaped when it exits, so that it does not linger as a zombie.
        std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = child.wait();
            })?;
        Ok(pid)
    }

    /// Pids of the appliance's haproxy and stunnel: from their pid files, and only
    /// processes whose command line names the appliance's runtime directory (a stale
    /// pid file must not make us signal a stranger).
    fn daemon_pids(&self, id: &str) -> Vec<i32> {
        let mut pids = Vec::new();
        // The link points at the runtime directory named in the agent's configuration.
        let Ok(run) = fs::read_link(self.dir(id).join("run")) else {
            return pids;
        };
        let Ok(instances) = fs::read_dir(&run) else {
            return pids;
        };
        let run_bytes = run.as_os_str().as_encoded_bytes().to_vec();
        let names_run = |pid: i32| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.windows(run_bytes.len())
                    .any(|w| w == run_bytes.as_slice())
            })
        };
        for instance in instances.flatten() {
            let Ok(files) = fs::read_dir(instance.path()) else {
                continue;
            };
            for f in files.flatten() {
                if f.path().extension().is_some_and(|e| e == "pid")
                    && let Ok(text) = fs::read_to_string(f.path())
                    && let Ok(pid) = text.trim().parse::<i32>()
                    && pid > 1
                    && names_run(pid)
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Stops the appliance like a power-off: SIGTERM to the agent (it reports `stopped`),
    /// killed after a grace period, then its haproxy and stunnel.
    fn stop(&self, id: &str) -> Result<(), BackendError> {
        if let Some(pid) = self.pid(id) {
            let pid = Pid::from_raw(pid);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
            if !gone_within(|| self.pid(id).is_none(), STOP_GRACE) {
                tracing::warn!(appliance = id, "agent ignored SIGTERM; killing it");
                let _ = kill(pid, Signal::SIGKILL);
                if !gone_within(|| self.pid(id).is_none(), Duration::from_secs(5)) {
                    return Err(BackendError::Failed(format!(
                        "agent of {id} (pid {pid}) does not stop"
                    )));
                }
            }
        }
        let daemons = self.daemon_pids(id);
        for pid in &daemons {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        let alive = |pid: &i32| kill(Pid::from_raw(*pid), None).is_ok() && !is_zombie(*pid);
        if !gone_within(|| !daemons.iter().any(alive), STOP_GRACE) {
            for pid in daemons.iter().filter(|p| alive(p)) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        Ok(())
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the agent and its daemons.
    fn signal_all(&self, id: &str, signal: Signal) -> Result<(), BackendError> {
        let agent = self
            .pid(id)
            .ok_or_else(|| BackendError::Failed(format!("the agent of {id} is not running")))?;
        for pid in std::iter::once(agent).chain(self.daemon_pids(id)) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        Ok(())
    }

    /// Stops the appliance and removes its directories.
    fn destroy(&self, id: &str) -> Result<(), BackendError> {
        self.stop(id)?;
        if let (Some(netns), Some(slot)) = (&self.netns, self.local_slot(id)) {
            netns.remove_namespace(slot).map_err(BackendError::Failed)?;
        }
        if let Ok(run) = fs::read_link(self.dir(id).join("run")) {
            match fs::remove_dir_all(&run) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&run)(e).into()),
                _ => {}
            }
        }
        match fs::remove_dir_all(self.dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(at(&self.dir(id))(e).into()),
        }
    }
}

/// Whether `pid` has exited and waits to be reaped.
fn is_zombie(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(|p| crate::process::process_state(p) == Some('Z'))
}

/// An I/O error that names the path it happened on.
fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Whether `pid` is stopped by a signal (suspended).
fn is_stopped(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(|p| crate::process::process_state(p) == Some('T'))
}

/// Whether `gone` turns true within `timeout`.
fn gone_within(mut gone: impl FnMut() -> bool, timeout: Duration) -> bool {
    crate::process::poll_until(timeout, || gone().then_some(())).is_some()
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        if self.netns.is_some() {
            "netns"
        } else {
            "process"
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create: true,
            power: true,
            suspend: true,
            regions: false,
            enrols: false,
        }
    }

    /// One image (this build of the agent), the configured flavors (or one without
    /// limits beyond the host's), one network (the loopback addresses of the slots).
    fn catalogue(&self) -> Catalogue {
        let entry = |id: &str, name: &str, description: String| CatalogueEntry {
            id: id.to_string(),
            name: name.to_string(),
            description,
        };
        let last = self
            .max_appliances
            .checked_sub(1)
            .and_then(|n| self.address(i64::from(self.slot_base + n)));
        Catalogue {
            images: vec![entry(
                concat!("applianced-", env!("CARGO_PKG_VERSION")),
                "applianced",
                format!(
                    "the applianced agent {} ({})",
                    env!("CARGO_PKG_VERSION"),
                    self.binary.display()
                ),
            )],
            flavors: if self.flavors.is_empty() {
                vec![entry(
                    DEFAULT_FLAVOR,
                    DEFAULT_FLAVOR,
                    "no resource limits beyond the host's".into(),
                )]
            } else {
                self.flavors
                    .iter()
                    .map(|f| entry(&f.name, &f.name, describe_flavor(f)))
                    .collect()
            },
            networks: vec![match &self.netns {
                Some(n) => entry(
                    &n.bridge,
                    &n.bridge,
                    format!(
                        "a network namespace each, on bridge {} ({}/{}), addresses from {}",
                        n.bridge,
                        n.network,
                        n.prefix,
                        n.address(0).map(|a| a.to_string()).unwrap_or_default()
                    ),
                ),
                None => entry(
                    "loopback",
                    "loopback",
                    match last {
                        Some(last) => format!("{} to {last}", self.first_address),
                        None => "no addresses".into(),
                    },
                ),
            }],
        }
    }

    fn regions(&self) -> Vec<Region> {
        self.regions.clone()
    }

    fn address(&self, slot: i64) -> Option<IpAddr> {
        ProcessBackend::address(self, slot)
    }

    fn slots(&self) -> std::ops::Range<i64> {
        let base = i64::from(self.slot_base);
        base..base + i64::from(self.max_appliances)
    }

    fn agent_port(&self) -> u16 {
        self.agent_port
    }

    fn create(&self, spec: &MachineSpec<'_>) -> Result<MachineState, BackendError> {
        let id = spec.id.as_str();
        let Join::Issued {
            slot,
            address,
            issued,
        } = spec.join
        else {
            return Err(BackendError::Failed(
                "process appliances are handed their certificate; they do not enrol".into(),
            ));
        };
        // An agent still running from an earlier attempt holds the old certificate.
        if self.pid(id).is_some() {
            self.stop(id)?;
        }
        self.provision(id, spec, (slot, address, issued))?;
        let pid = self.start(id)?;
        Ok(MachineState::Running { pid: Some(pid) })
    }

    fn get(&self, id: &ApplianceId) -> Result<MachineState, BackendError> {
        let id = id.as_str();
        if !self.config_path(id).exists() {
            return Ok(MachineState::Absent);
        }
        Ok(match self.pid(id) {
            None => MachineState::Stopped,
            Some(pid) if is_stopped(pid) => MachineState::Suspended,
            Some(pid) => MachineState::Running { pid: Some(pid) },
        })
    }

    fn action(&self, id: &ApplianceId, action: MachineAction) -> Result<(), BackendError> {
        let id = id.as_str();
        match action {
            MachineAction::Start => self.start(id).map(drop),
            MachineAction::Stop => self.stop(id),
            MachineAction::Suspend => self.signal_all(id, Signal::SIGSTOP),
            MachineAction::Resume => self.signal_all(id, Signal::SIGCONT),
        }
    }

    fn delete(&self, id: &ApplianceId) -> Result<(), BackendError> {
        self.destroy(id.as_str())
    }
}

/// What a flavor limits, in words.
fn describe_flavor(f: &FlavorConfig) -> String {
    let mut parts = Vec::new();
    if let Some(mb) = f.memory_mb {
        parts.push(format!("{mb} MiB of memory per process"));
    }
    if let Some(n) = f.open_files {
        parts.push(format!("{n} open files per process"));
    }
    if let Some(n) = f.cpu_nice {
        parts.push(format!("CPU niceness {n}"));
    }
    if parts.is_empty() {
        "no resource limits beyond the host's".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(first: &str, max: u32) -> ProcessBackend {
        ProcessBackend {
            root: "/nonexistent".into(),
            run_root: "/nonexistent/run".into(),
            binary: "applianced".into(),
            first_address: first.parse().unwrap(),
            slot_base: 0,
            max_appliances: max,
            agent_port: 9443,
            controller_url: "https://127.0.0.1:8444".into(),
            controller_ca: "/ca.crt".into(),
            ca_cert: "/ca.crt".into(),
            crl: "/crl.pem".into(),
            heartbeat_interval: Duration::from_secs(30),
            appliance_ids: None,
            regions: vec![Region {
                name: "local".into(),
                priority: 0,
                capacity: max,
            }],
            flavors: Vec::new(),
            netns: None,
        }
    }

    #[test]
    fn slots_map_to_loopback_addresses_within_the_limit() {
        let b = backend("127.0.1.1", 300);
        assert_eq!(b.address(0), Some("127.0.1.1".parse().unwrap()));
        assert_eq!(b.address(255), Some("127.0.2.0".parse().unwrap()));
        assert_eq!(b.address(300), None);
        assert_eq!(b.address(-1), None);
        let edge = backend("127.255.255.254", 10);
        assert_eq!(edge.address(1), Some("127.255.255.255".parse().unwrap()));
        assert_eq!(edge.address(2), None, "leaves 127/8");
    }

    #[test]
    fn catalogue_regions_and_capabilities_describe_the_loopback_slots() {
        let b = backend("127.0.1.1", 250);
        assert_eq!(b.name(), "process");
        let c = b.capabilities();
        assert!(c.create && c.power && c.suspend && !c.regions, "{c:?}");
        let cat = b.catalogue();
        assert_eq!(cat.images.len(), 1);
        assert!(cat.images[0].id.starts_with("applianced-"));
        assert_eq!(cat.flavors[0].name, "default");
        assert_eq!(cat.networks[0].description, "127.0.1.1 to 127.0.1.250");
        assert_eq!(
            b.regions(),
            [Region {
                name: "local".into(),
                priority: 0,
                capacity: 250
            }]
        );
    }

    #[test]
    fn machine_states_come_from_the_files_and_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = backend("127.0.1.1", 10);
        b.root = dir.path().to_path_buf();
        let id = ApplianceId::from("a1".to_string());
        assert_eq!(b.get(&id).unwrap(), MachineState::Absent);
        fs::create_dir_all(b.dir("a1")).unwrap();
        fs::write(b.config_path("a1"), "").unwrap();
        assert_eq!(b.get(&id).unwrap(), MachineState::Stopped);
        // A pid file naming a process that is not this appliance's agent is not it.
        fs::write(
            b.dir("a1").join("agent.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(b.get(&id).unwrap(), MachineState::Stopped);
        b.delete(&id).unwrap();
        assert_eq!(b.get(&id).unwrap(), MachineState::Absent);
        assert!(!b.dir("a1").exists());
        b.delete(&id).unwrap();
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
