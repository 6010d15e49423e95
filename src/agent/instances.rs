//! Instance operations: upload, read and delete of an instance's files, applied to its
//! daemons with rollback.
//!
//! The rule: every daemon whose configuration exists runs with the files on disk. A
//! change writes its files (atomically), then brings the affected daemons in line:
//! render, check (`haproxy -c`; stunnel as far as possible), then reload or start. If
//! any step fails, the previous files are restored and the daemons brought back in line
//! with them, and the request is refused with the daemon's output. haproxy
//! configurations are checked before they touch the disk at all.
//!
//! Operations on one instance are serialised; different instances proceed in parallel.
//! Everything here is blocking; the HTTP layer runs it on the blocking pool.

use std::ffi::OsStr;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::addresses::AddressManager;
use super::bundle;
use super::daemons::{ServiceManager, rendered_config, run_captured};
use super::ids::{CertName, InstanceFile, InstanceId};
use super::policy::{self, Policy, Scope, Violation};
use super::render::{self, Placeholders};
use super::store::{Daemon, InstanceStore};
use crate::certs::{self, CertError};
use crate::fsutil::{ensure_dir, remove_durable, write_atomic};

/// Largest custom 503 response haproxy accepts with its default buffer size.
pub const MAX_CUSTOM503_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("Not found")]
    NotFound,
    #[error("Invalid configuration")]
    InvalidConfig { output: String },
    #[error("Forbidden directive: {}", first_violation(.0))]
    ForbiddenDirective(Vec<Violation>),
    #[error("Apply failed; the previous state was restored")]
    ApplyFailed { output: String },
    #[error("Certificate is used by the instance's configuration")]
    CertificateInUse { output: String },
    #[error("Invalid custom 503 response: {0}")]
    InvalidCustom503(String),
    #[error("Body larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The first refused line, for the message (the list is never empty when refused).
fn first_violation(violations: &[Violation]) -> String {
    violations
        .first()
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// A change that was applied: the first line is `OK`, then `output`.
#[derive(Debug)]
pub struct Applied {
    pub output: String,
}

#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub management_ip: Option<IpAddr>,
    pub allow_invalid_dates: bool,
    pub haproxy_bin: PathBuf,
    /// Interface that missing bind addresses are added to; `None`: not managed.
    pub vip_interface: Option<String>,
    pub ip_bin: PathBuf,
    /// What uploaded configurations may name and do.
    pub policy: Policy,
    /// Who instances' daemons run as, and so who their files are made readable by.
    pub isolation: Isolation,
}

/// Who instances' daemons run as.
#[derive(Debug, Clone, Copy)]
pub enum Isolation {
    /// As the agent: nothing to arrange.
    None,
    /// Each instance as its own user and group (a root agent's direct service manager).
    PerInstance(DaemonIds),
    /// As a user of this group, which the agent is a member of (the systemd units):
    /// instances' files are made readable by the group, the agent's own are not.
    Group(u32),
}

/// A range of user and group ids, one of each per instance (uid = gid), none with a name:
/// no instance's daemons can read another's files or the agent's.
#[derive(Debug, Clone, Copy)]
pub struct DaemonIds {
    pub first: u32,
    pub count: u32,
}

impl DaemonIds {
    fn contains(&self, id: u32) -> bool {
        id >= self.first && id - self.first < self.count
    }
}

type Labels = Vec<(String, String)>;

pub struct InstanceManager {
    store: InstanceStore,
    services: Arc<dyn ServiceManager>,
    addresses: Option<AddressManager>,
    settings: InstanceSettings,
    locks: super::store::KeyedLocks<InstanceId>,
    /// Serialises the choice of a new instance's daemon id.
    allocation: Mutex<()>,
    operations: Family<Labels, Counter>,
}

/// A file's content before a change, to restore it.
struct Snapshot {
    path: PathBuf,
    content: Option<Vec<u8>>,
    mode: u32,
}

impl InstanceManager {
    pub fn new(
        store: InstanceStore,
        services: Arc<dyn ServiceManager>,
        settings: InstanceSettings,
        operations: Family<Labels, Counter>,
    ) -> InstanceManager {
        let addresses = settings
            .vip_interface
            .clone()
            .map(|iface| AddressManager::new(iface, settings.ip_bin.clone(), store.clone()));
        InstanceManager {
            store,
            services,
            addresses,
            settings,
            locks: Default::default(),
            allocation: Mutex::new(()),
            operations,
        }
    }

    pub fn store(&self) -> &InstanceStore {
        &self.store
    }

    fn lock(&self, id: &InstanceId) -> Arc<Mutex<()>> {
        self.locks.get(id)
    }

    fn path(&self, id: &InstanceId, file: &InstanceFile) -> PathBuf {
        self.store.dir(id).join(file.relative_path())
    }

    /// The instance's certificate directory (what `{CERTS}` stands for).
    pub fn certs_dir(&self, id: &InstanceId) -> PathBuf {
        self.store.dir(id).join("certificates")
    }

    /// Reads an instance file.
    pub fn get_file(&self, id: &InstanceId, file: &InstanceFile) -> Result<Vec<u8>, InstanceError> {
        match std::fs::read(self.path(id, file)) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(InstanceError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// Uploads an instance file and applies it.
    pub fn put_file(
        &self,
        id: &InstanceId,
        file: &InstanceFile,
        body: &[u8],
    ) -> Result<Applied, InstanceError> {
        let mut notes = Vec::new();
        // Checks that need no lock: the body alone decides.
        let (mode, affected): (u32, &[(Daemon, Apply)]) = match file {
            InstanceFile::Haproxy => {
                utf8(body)?;
                (0o640, &[(Daemon::Haproxy, Apply::Config)])
            }
            InstanceFile::Stunnel => {
                utf8(body)?;
                (0o640, &[(Daemon::Stunnel, Apply::Config)])
            }
            InstanceFile::Custom503 => {
                check_custom503(body)?;
                (0o644, &[(Daemon::Haproxy, Apply::Files)])
            }
            InstanceFile::Certificate(name) => {
                let valid = bundle::validate(
                    name.as_str(),
                    body,
                    self.settings.allow_invalid_dates,
                    certs::now_unix(),
                )?;
                if let Some(w) = valid.warning {
                    tracing::warn!(instance = %id, file = name.as_str(), "certificate accepted outside its validity: {w}");
                    notes.push(format!("warning: {w}"));
                }
                (
                    0o600,
                    &[
                        (Daemon::Stunnel, Apply::Files),
                        (Daemon::Haproxy, Apply::Files),
                    ],
                )
            }
        };
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.ensure_dirs(id, file)?;
        let result = match file {
            InstanceFile::Haproxy => self
                .check_policy(id, Daemon::Haproxy, body)
                .and_then(|()| self.check_haproxy_candidate(id, body))
                .map(Some),
            InstanceFile::Stunnel => self.check_policy(id, Daemon::Stunnel, body).map(|()| None),
            _ => Ok(None),
        }
        .and_then(|checked| {
            let path = self.path(id, file);
            self.transact(
                id,
                vec![(path, Some(body.to_vec()), mode)],
                affected,
                checked.as_deref(),
            )
        });
        if result.is_err() {
            // A refused upload to a new instance leaves no trace of it.
            self.remove_empty_dirs(id);
        }
        let applied = result?;
        notes.push(applied.output);
        Ok(Applied {
            output: join_lines(&notes),
        })
    }

    /// Deletes an instance file and brings the daemons in line.
    pub fn delete_file(
        &self,
        id: &InstanceId,
        file: &InstanceFile,
    ) -> Result<Applied, InstanceError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.path(id, file);
        if !path.is_file() {
            return Err(InstanceError::NotFound);
        }
        let result = match file {
            // Without its configuration the daemon is stopped by `sync`.
            InstanceFile::Haproxy => self.transact(
                id,
                vec![(path, None, 0o640)],
                &[(Daemon::Haproxy, Apply::Config)],
                None,
            ),
            InstanceFile::Stunnel => self.transact(
                id,
                vec![(path, None, 0o640)],
                &[(Daemon::Stunnel, Apply::Config)],
                None,
            ),
            InstanceFile::Custom503 => self.transact(
                id,
                vec![(path, None, 0o644)],
                &[(Daemon::Haproxy, Apply::Files)],
                None,
            ),
            InstanceFile::Certificate(name) => {
                let stunnel = std::fs::read_to_string(self.store.config_path(id, Daemon::Stunnel))
                    .unwrap_or_default();
                if stunnel.contains(name.as_str()) {
                    return Err(InstanceError::CertificateInUse {
                        output: format!("the stunnel configuration refers to {}", name.as_str()),
                    });
                }
                // Checked like a configuration change: the removed file may be one the
                // configuration needs, and the check refuses that without touching haproxy.
                self.transact(
                    id,
                    vec![(path, None, 0o600)],
                    &[(Daemon::Haproxy, Apply::Config)],
                    None,
                )
                .map_err(|e| match e {
                    InstanceError::InvalidConfig { output }
                    | InstanceError::ApplyFailed { output } => {
                        InstanceError::CertificateInUse { output }
                    }
                    other => other,
                })
            }
        };
        self.remove_empty_dirs(id);
        result
    }

    /// Stops the instance's daemons and removes everything it has.
    pub fn delete_instance(&self, id: &InstanceId) -> Result<Applied, InstanceError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.store.has_files(id)? && !self.store.run_dir(id).exists() {
            return Err(InstanceError::NotFound);
        }
        let mut output = Vec::new();
        for daemon in [Daemon::Haproxy, Daemon::Stunnel] {
            match self.op(daemon, "stop", self.services.stop(id, daemon)) {
                Ok(o) => output.push(o),
                Err(e) => return Err(InstanceError::ApplyFailed { output: e }),
            }
        }
        let _ = std::fs::remove_file(rendered_config(&self.store, id, Daemon::Haproxy));
        match self.sync_addresses(id, Daemon::Haproxy, None) {
            Ok(o) => output.push(o),
            Err(e) => output.push(format!("addresses not released: {}", e.output())),
        }
        remove_tree(&self.store.dir(id))?;
        remove_tree(&self.store.run_dir(id))?;
        Ok(Applied {
            output: join_lines(&output),
        })
    }

    /// Writes a file of the instance's certificate directory that the caller has
    /// validated (Octavia's bundles, CA files, CRLs and crt-lists, whose names are ids,
    /// not the certificate's names), atomically and serialised with the instance's other
    /// operations. No daemon is touched: as with Octavia's agent, haproxy takes it at the
    /// next configuration upload or reload. Returns false when the same bytes were
    /// already there (nothing written).
    pub fn put_certificate_file(
        &self,
        id: &InstanceId,
        name: &CertName,
        body: &[u8],
    ) -> Result<bool, InstanceError> {
        let file = InstanceFile::Certificate(name.clone());
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.path(id, &file);
        if std::fs::read(&path).is_ok_and(|current| current == body) {
            return Ok(false);
        }
        self.ensure_dirs(id, &file)?;
        // Owned by the instance's daemons like every certificate of theirs.
        let written = write_atomic(&path, body, 0o600).and_then(|()| self.settle_ownership(id));
        if written.is_err() {
            self.remove_empty_dirs(id);
        }
        written?;
        Ok(true)
    }

    /// Removes a file of the instance's certificate directory without touching the
    /// daemons (Octavia removes certificates before it uploads the configuration that
    /// stops using them; the running haproxy keeps what it loaded). Returns false when
    /// there was no such file.
    pub fn remove_certificate_file(
        &self,
        id: &InstanceId,
        name: &CertName,
    ) -> Result<bool, InstanceError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.path(id, &InstanceFile::Certificate(name.clone()));
        if !path.is_file() {
            return Ok(false);
        }
        remove_durable(&path)?;
        self.remove_empty_dirs(id);
        Ok(true)
    }

    /// Brings the instance's haproxy in line with its files (certificates written since
    /// its last reload included): gracefully reloaded, or checked and started when it is
    /// not running. Nothing changes on disk, so a failed reload leaves the running
    /// workers as they were.
    pub fn reload_haproxy(&self, id: &InstanceId) -> Result<Applied, InstanceError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.store.has_config(id, Daemon::Haproxy) {
            return Err(InstanceError::NotFound);
        }
        // As after a certificate change: an unchanged rendering under a running haproxy
        // needs no `haproxy -c`, the graceful reload is the check.
        match self.sync(id, Daemon::Haproxy, Apply::Files, None) {
            Ok(output) => Ok(Applied { output }),
            Err(SyncError::Invalid(output)) => Err(InstanceError::InvalidConfig { output }),
            Err(SyncError::Failed(output)) => Err(InstanceError::ApplyFailed { output }),
        }
    }

    /// Stops the instance's haproxy and keeps its files (until the next change, reload
    /// or agent restart starts it again).
    pub fn stop_haproxy(&self, id: &InstanceId) -> Result<Applied, InstanceError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.store.has_config(id, Daemon::Haproxy) {
            return Err(InstanceError::NotFound);
        }
        let output = self
            .op(
                Daemon::Haproxy,
                "stop",
                self.services.stop(id, Daemon::Haproxy),
            )
            .map_err(|output| InstanceError::ApplyFailed { output })?;
        Ok(Applied { output })
    }

    /// Starts every configured daemon that is not running (after a reboot, or a crash of
    /// a daemon). Running daemons are adopted as they are.
    pub fn recover(&self) -> Vec<String> {
        let mut report = Vec::new();
        for id in self.store.list().unwrap_or_default() {
            // After a reboot the run directory is gone; a crash may have left a file
            // without its owner.
            let prepared = ensure_dir(&self.store.run_dir(&id), 0o750)
                .and_then(|()| self.settle_ownership(&id));
            if let Err(e) = prepared {
                report.push(format!("{id}: cannot prepare its directories: {e}"));
                continue;
            }
            for daemon in [Daemon::Stunnel, Daemon::Haproxy] {
                if !self.store.has_config(&id, daemon) {
                    continue;
                }
                match self.services.pid(&id, daemon) {
                    Some(pid) if self.runs_what_is_on_disk(&id, daemon) => {
                        report.push(format!("{id} {}: adopted (pid {pid})", daemon.name()))
                    }
                    Some(pid) => {
                        // Killed between writing the files and applying them (or
                        // between applying and recording it): make the daemon match.
                        let lock = self.lock(&id);
                        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                        match self.sync(&id, daemon, Apply::Config, None) {
                            Ok(_) => report.push(format!(
                                "{id} {}: adopted (pid {pid}) and brought in line with the files on disk",
                                daemon.name()
                            )),
                            Err(e) => report.push(format!(
                                "{id} {}: adopted (pid {pid}); cannot bring it in line with the files on disk: {}",
                                daemon.name(),
                                e.output()
                            )),
                        }
                    }
                    None => {
                        let lock = self.lock(&id);
                        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                        match self.sync(&id, daemon, Apply::Config, None) {
                            Ok(_) => report.push(format!("{id} {}: started", daemon.name())),
                            Err(e) => report.push(format!(
                                "{id} {}: failed to start: {}",
                                daemon.name(),
                                e.output()
                            )),
                        }
                    }
                }
            }
        }
        report
    }

    fn ensure_dirs(&self, id: &InstanceId, file: &InstanceFile) -> io::Result<()> {
        ensure_dir(&self.store.dir(id), 0o750)?;
        ensure_dir(&self.store.run_dir(id), 0o750)?;
        if matches!(file, InstanceFile::Certificate(_)) {
            ensure_dir(&self.certs_dir(id), 0o700)?;
        }
        self.settle_ownership(id)
    }

    /// The instance's daemon id (uid = gid), chosen at its first upload and recorded as
    /// the group of its directory; `None` when daemons are not isolated.
    fn daemon_id(&self, id: &InstanceId, ids: DaemonIds) -> io::Result<u32> {
        let dir = self.store.dir(id);
        let recorded = |dir: &Path| {
            std::fs::metadata(dir)
                .map(|m| m.gid())
                .ok()
                .filter(|g| ids.contains(*g))
        };
        if let Some(n) = recorded(&dir) {
            return Ok(n);
        }
        let _one_at_a_time = self.allocation.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = std::collections::HashSet::new();
        for entry in std::fs::read_dir(self.store.instances_dir())? {
            if let Some(n) = recorded(&entry?.path()) {
                used.insert(n);
            }
        }
        let n = (ids.first..ids.first.saturating_add(ids.count))
            .find(|n| !used.contains(n))
            .ok_or_else(|| {
                io::Error::other("no daemon id left: raise instances.daemon_id_count")
            })?;
        std::os::unix::fs::chown(&dir, Some(0), Some(n))?;
        Ok(n)
    }

    /// Gives an instance's daemons what they need and nothing more. Per instance: its
    /// directory and certificate directory searchable by its group (root-owned), its
    /// certificates owned by its user (0600), its run directory its own (set-group-id, so
    /// the rendered configurations the agent writes there are readable by the group).
    /// By group: the same directories in the daemons' group, certificates 0640.
    fn settle_ownership(&self, id: &InstanceId) -> io::Result<()> {
        use std::os::unix::fs::{PermissionsExt, chown};
        let (user, group, cert_mode) = match self.settings.isolation {
            Isolation::None => return Ok(()),
            Isolation::PerInstance(ids) => {
                let n = self.daemon_id(id, ids)?;
                (Some(n), n, 0o600)
            }
            Isolation::Group(g) => (None, g, 0o640),
        };
        let root = user.map(|_| 0);
        let set_mode = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        };
        chown(self.store.dir(id), root, Some(group))?;
        let run = self.store.run_dir(id);
        if run.is_dir() {
            chown(&run, user, Some(group))?;
            set_mode(&run, if user.is_some() { 0o2750 } else { 0o2770 })?;
        }
        let certs = self.certs_dir(id);
        if certs.is_dir() {
            chown(&certs, root, Some(group))?;
            set_mode(&certs, 0o2750)?;
            for entry in std::fs::read_dir(&certs)? {
                let path = entry?.path();
                if path.is_file() {
                    chown(&path, user, Some(group))?;
                    set_mode(&path, cert_mode)?;
                }
            }
        }
        Ok(())
    }

    /// Removes the certificate directory and the instance directories once they hold no
    /// file (the seed's rule), unless a daemon still runs.
    fn remove_empty_dirs(&self, id: &InstanceId) {
        let _ = std::fs::remove_dir(self.certs_dir(id));
        if self.store.has_files(id).unwrap_or(true) {
            return;
        }
        if Daemon::ALL
            .iter()
            .any(|d| self.services.pid(id, *d).is_some())
        {
            return;
        }
        let _ = remove_tree(&self.store.dir(id));
        let _ = remove_tree(&self.store.run_dir(id));
    }

    /// Writes the changes, brings `affected` daemons in line; on failure restores the
    /// files and brings the daemons back in line with them.
    fn transact(
        &self,
        id: &InstanceId,
        changes: Vec<(PathBuf, Option<Vec<u8>>, u32)>,
        affected: &[(Daemon, Apply)],
        checked: Option<&str>,
    ) -> Result<Applied, InstanceError> {
        let mut snapshots = Vec::with_capacity(changes.len());
        for (path, _, mode) in &changes {
            let content = match std::fs::read(path) {
                Ok(c) => Some(c),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            snapshots.push(Snapshot {
                path: path.clone(),
                content,
                mode: *mode,
            });
        }
        // A failed write leaves its file as it was: only the ones before it are restored
        // (a full disk must not turn into "cannot restore" for files never changed).
        for (done, (path, content, mode)) in changes.iter().enumerate() {
            if let Err(e) = write_or_remove(path, content.as_deref(), *mode) {
                restore(&snapshots[..done]);
                return Err(e.into());
            }
        }
        if let Err(e) = self.settle_ownership(id) {
            restore(&snapshots);
            let _ = self.settle_ownership(id);
            return Err(e.into());
        }
        let mut outputs = Vec::new();
        for (daemon, how) in affected {
            match self.sync(id, *daemon, *how, checked) {
                Ok(o) => outputs.push(o),
                Err(err) => {
                    restore(&snapshots);
                    if let Err(e) = self.settle_ownership(id) {
                        tracing::error!(instance = %id, error = %e, "cannot restore file ownership");
                    }
                    let mut rollback = Vec::new();
                    for (d, how) in affected {
                        match self.sync(id, *d, *how, None) {
                            Ok(o) => rollback.push(o),
                            Err(e) => {
                                tracing::error!(instance = %id, daemon = d.name(), "rollback failed: {}", e.output());
                                rollback.push(format!(
                                    "rollback of {} failed: {}",
                                    d.name(),
                                    e.output()
                                ));
                            }
                        }
                    }
                    let output =
                        format!("{}\nrolled back:\n{}", err.output(), join_lines(&rollback));
                    return Err(match err {
                        SyncError::Invalid(_) => InstanceError::InvalidConfig { output },
                        SyncError::Failed(_) => InstanceError::ApplyFailed { output },
                    });
                }
            }
        }
        Ok(Applied {
            output: join_lines(&outputs),
        })
    }

    /// Brings one daemon in line with the files: no configuration, stopped; else
    /// rendered, checked, and reloaded (or started).
    /// `checked`: an haproxy rendering that already passed `haproxy -c` in this request.
    fn sync(
        &self,
        id: &InstanceId,
        daemon: Daemon,
        how: Apply,
        checked: Option<&str>,
    ) -> Result<String, SyncError> {
        let raw = match std::fs::read_to_string(self.store.config_path(id, daemon)) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(rendered_config(&self.store, id, daemon));
                let stopped = match self.services.pid(id, daemon) {
                    None => String::new(),
                    Some(_) => self
                        .op(daemon, "stop", self.services.stop(id, daemon))
                        .map_err(SyncError::Failed)?,
                };
                let released = self.sync_addresses(id, daemon, None)?;
                self.record_applied(id, daemon, None);
                return Ok(join_lines(&[stopped, released]));
            }
            Err(e) => return Err(SyncError::Failed(e.to_string())),
        };
        let rendered = self
            .render(id, daemon, &raw)
            .map_err(|e| SyncError::Invalid(e.0))?;
        let target = rendered_config(&self.store, id, daemon);
        let pid = self.services.pid(id, daemon);
        // `haproxy -c` runs unless this exact rendering is known good: just checked in
        // this request, or unchanged under a running haproxy when only files it reads
        // changed (then the graceful reload is the check: a failed one leaves the old
        // workers serving, shows in the master's counters, and is rolled back).
        let unchanged = std::fs::read_to_string(&target).is_ok_and(|current| current == rendered);
        let known_good = checked == Some(rendered.as_str())
            || (how == Apply::Files && pid.is_some() && unchanged);
        match daemon {
            Daemon::Haproxy if known_good => {
                if !unchanged {
                    write_atomic(&target, rendered.as_bytes(), 0o640)
                        .map_err(|e| SyncError::Failed(e.to_string()))?;
                }
            }
            Daemon::Haproxy => {
                let candidate = target.with_extension("cfg.check");
                write_atomic(&candidate, rendered.as_bytes(), 0o640)
                    .map_err(|e| SyncError::Failed(e.to_string()))?;
                if let Err(output) = self.haproxy_check(&candidate) {
                    let _ = std::fs::remove_file(&candidate);
                    return Err(SyncError::Invalid(output));
                }
                std::fs::rename(&candidate, &target)
                    .map_err(|e| SyncError::Failed(e.to_string()))?;
            }
            Daemon::Stunnel => {
                write_atomic(&target, rendered.as_bytes(), 0o640)
                    .map_err(|e| SyncError::Failed(e.to_string()))?;
            }
        }
        // The addresses it binds must exist before haproxy binds them.
        let added = self.sync_addresses(id, daemon, Some(&rendered))?;
        let (verb, result) = match (pid, daemon, how) {
            (None, ..) => ("start", self.services.start(id, daemon)),
            (Some(_), Daemon::Stunnel, Apply::Config) => {
                ("restart", self.services.restart(id, daemon))
            }
            (Some(_), ..) => ("reload", self.services.reload(id, daemon)),
        };
        let output = self.op(daemon, verb, result).map_err(SyncError::Failed)?;
        self.record_applied(id, daemon, Some(&rendered));
        Ok(join_lines(&[added, output]))
    }

    /// `RUN/<id>/<daemon>.applied`: the digest of what the running daemon was last
    /// brought in line with (rendered configuration, certificates, custom 503).
    fn applied_marker(&self, id: &InstanceId, daemon: Daemon) -> PathBuf {
        self.store
            .run_dir(id)
            .join(format!("{}.applied", daemon.name()))
    }

    /// The digest of everything `daemon` reads for this instance, with `rendered` as its
    /// configuration.
    fn applied_digest(&self, id: &InstanceId, rendered: &str) -> String {
        use aws_lc_rs::digest;
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut add = |label: &[u8], data: &[u8]| {
            ctx.update(&(label.len() as u64).to_le_bytes());
            ctx.update(label);
            ctx.update(&(data.len() as u64).to_le_bytes());
            ctx.update(data);
        };
        add(b"config", rendered.as_bytes());
        add(
            b"custom503",
            &std::fs::read(self.path(id, &InstanceFile::Custom503)).unwrap_or_default(),
        );
        let mut certs: Vec<_> = std::fs::read_dir(self.certs_dir(id))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        certs.sort();
        for cert in certs {
            if let Some(name) = cert.file_name().and_then(|n| n.to_str())
                && !crate::fsutil::is_temporary(name)
            {
                add(name.as_bytes(), &std::fs::read(&cert).unwrap_or_default());
            }
        }
        crate::certs::hex(ctx.finish().as_ref())
    }

    /// Records what the daemon now runs with (`None`: it is stopped). Best effort: a
    /// missing record only costs one extra reload at the next start.
    fn record_applied(&self, id: &InstanceId, daemon: Daemon, rendered: Option<&str>) {
        let marker = self.applied_marker(id, daemon);
        let result = match rendered {
            Some(r) => write_atomic(&marker, self.applied_digest(id, r).as_bytes(), 0o640),
            None => remove_durable(&marker).map(|_| ()),
        };
        if let Err(e) = result {
            tracing::warn!(instance = %id, daemon = daemon.name(), error = %e, "cannot record the applied state");
        }
    }

    /// Whether the running daemon was last brought in line with the files on disk as
    /// they are now.
    fn runs_what_is_on_disk(&self, id: &InstanceId, daemon: Daemon) -> bool {
        let Ok(raw) = std::fs::read_to_string(self.store.config_path(id, daemon)) else {
            return false;
        };
        let Ok(rendered) = self.render(id, daemon, &raw) else {
            return false;
        };
        std::fs::read_to_string(self.applied_marker(id, daemon))
            .is_ok_and(|recorded| recorded == self.applied_digest(id, &rendered))
    }

    /// Address management for haproxy's bind addresses, when configured.
    fn sync_addresses(
        &self,
        id: &InstanceId,
        daemon: Daemon,
        rendered: Option<&str>,
    ) -> Result<String, SyncError> {
        match (&self.addresses, daemon) {
            (Some(a), Daemon::Haproxy) => a.sync(id, rendered).map_err(SyncError::Failed),
            _ => Ok(String::new()),
        }
    }

    /// The directive policy on an uploaded configuration, before anything runs or is
    /// written: `ForbiddenDirective` with every refused line.
    fn check_policy(
        &self,
        id: &InstanceId,
        daemon: Daemon,
        body: &[u8],
    ) -> Result<(), InstanceError> {
        let raw = utf8(body)?;
        let certs_dir = self.certs_dir(id);
        let custom503 = self.path(id, &InstanceFile::Custom503);
        let expanded = render::substitute(raw, &self.placeholders(&certs_dir, &custom503))
            .map_err(|e| InstanceError::InvalidConfig { output: e.0 })?;
        self.judge(id, daemon, &expanded)
            .map_err(InstanceError::ForbiddenDirective)
    }

    fn judge(&self, id: &InstanceId, daemon: Daemon, expanded: &str) -> Result<(), Vec<Violation>> {
        let (dir, run) = (self.store.dir(id), self.store.run_dir(id));
        let scope = Scope::new(&[&dir, &run], &policy::FileSystem);
        match daemon {
            Daemon::Haproxy => self.settings.policy.check_haproxy(expanded, &scope),
            Daemon::Stunnel => self.settings.policy.check_stunnel(expanded, &scope),
        }
    }

    fn placeholders<'a>(&self, certs_dir: &'a Path, custom503: &'a Path) -> Placeholders<'a> {
        Placeholders {
            my_ip: self.settings.management_ip,
            certs_dir,
            custom503,
        }
    }

    /// Renders a stored configuration, which must still pass the policy (an operator may
    /// have narrowed it since the upload).
    fn render(
        &self,
        id: &InstanceId,
        daemon: Daemon,
        raw: &str,
    ) -> Result<String, render::RenderError> {
        let certs_dir = self.certs_dir(id);
        let custom503 = self.path(id, &InstanceFile::Custom503);
        let p = self.placeholders(&certs_dir, &custom503);
        let expanded = render::substitute(raw, &p)?;
        self.judge(id, daemon, &expanded).map_err(|v| {
            render::RenderError(format!(
                "forbidden by the directive policy:\n{}",
                v.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        })?;
        match daemon {
            Daemon::Haproxy => render::render_haproxy(raw, &p, custom503.is_file()),
            Daemon::Stunnel => {
                render::render_stunnel(raw, &p, &self.store.pid_file(id, Daemon::Stunnel), |f| {
                    Path::new(f).exists()
                })
            }
        }
    }

    /// Renders and checks an uploaded haproxy configuration before anything is written.
    fn check_haproxy_candidate(
        &self,
        id: &InstanceId,
        body: &[u8],
    ) -> Result<String, InstanceError> {
        let raw = utf8(body)?;
        let rendered = self
            .render(id, Daemon::Haproxy, raw)
            .map_err(|e| InstanceError::InvalidConfig { output: e.0 })?;
        let candidate =
            rendered_config(&self.store, id, Daemon::Haproxy).with_extension("cfg.upload");
        write_atomic(&candidate, rendered.as_bytes(), 0o640)?;
        let checked = self.haproxy_check(&candidate);
        let _ = std::fs::remove_file(&candidate);
        checked
            .map(|_| rendered)
            .map_err(|output| InstanceError::InvalidConfig { output })
    }

    /// `haproxy -c -f FILE`: Ok with its output, or Err with it.
    fn haproxy_check(&self, config: &Path) -> Result<String, String> {
        // The checker names the temporary file; the client knows it as haproxy.cfg.
        let rename = |text: String| text.replace(&config.display().to_string(), "haproxy.cfg");
        run_captured(
            &self.settings.haproxy_bin,
            &[OsStr::new("-c"), OsStr::new("-f"), config.as_os_str()],
        )
        .map(rename)
        .map_err(rename)
    }

    /// Counts a daemon operation by result, logs a failure.
    fn op(
        &self,
        daemon: Daemon,
        verb: &str,
        result: Result<String, String>,
    ) -> Result<String, String> {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.operations
            .get_or_create(&vec![
                ("daemon".into(), daemon.name().into()),
                ("operation".into(), verb.into()),
                ("result".into(), outcome.into()),
            ])
            .inc();
        if let Err(e) = &result {
            tracing::warn!(
                daemon = daemon.name(),
                operation = verb,
                "daemon operation failed: {e}"
            );
        }
        result
    }
}

/// How a running daemon takes a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// Its own configuration changed: haproxy reloads, stunnel restarts.
    Config,
    /// Only files it reads changed (certificates, the 503 page): graceful reloads.
    Files,
}

enum SyncError {
    /// Refused before the daemon was touched (render or check).
    Invalid(String),
    /// The daemon did not take it.
    Failed(String),
}

impl SyncError {
    fn output(&self) -> &str {
        match self {
            SyncError::Invalid(o) | SyncError::Failed(o) => o,
        }
    }
}

fn utf8(body: &[u8]) -> Result<&str, InstanceError> {
    std::str::from_utf8(body).map_err(|e| InstanceError::InvalidConfig {
        output: format!("not UTF-8 text: {e}"),
    })
}

fn check_custom503(body: &[u8]) -> Result<(), InstanceError> {
    if body.len() > MAX_CUSTOM503_BYTES {
        return Err(InstanceError::TooLarge(MAX_CUSTOM503_BYTES));
    }
    if !body.starts_with(b"HTTP/1.") {
        return Err(InstanceError::InvalidCustom503(
            "it must be a full HTTP response starting with a status line (\"HTTP/1.0 503 ...\")"
                .into(),
        ));
    }
    Ok(())
}

fn write_or_remove(path: &Path, content: Option<&[u8]>, mode: u32) -> io::Result<()> {
    match content {
        Some(c) => write_atomic(path, c, mode),
        None => remove_durable(path).map(|_| ()),
    }
}

fn restore(snapshots: &[Snapshot]) {
    for s in snapshots {
        if let Err(e) = write_or_remove(&s.path, s.content.as_deref(), s.mode) {
            tracing::error!(file = %s.path.display(), error = %e, "cannot restore file");
        }
    }
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => crate::fsutil::sync_dir(dir.parent().unwrap_or(Path::new("/"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn join_lines(parts: &[String]) -> String {
    parts
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}
