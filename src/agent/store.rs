//! The instance store: one directory per instance under `STATE/instances/<id>/`.
//!
//! ```text
//! STATE/instances/<id>/haproxy.cfg          the haproxy configuration
//! STATE/instances/<id>/stunnel.conf         the stunnel configuration
//! STATE/instances/<id>/custom503.http       the custom 503 response
//! STATE/instances/<id>/certificates/*.pem   certificate bundles (0600)
//! RUN/<id>/haproxy.pid, stunnel.pid         pid files of the instance's daemons
//! ```

use std::io;
use std::path::{Path, PathBuf};

use super::ids::InstanceId;

/// The daemons an instance can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Daemon {
    Haproxy,
    Stunnel,
}

impl Daemon {
    pub const ALL: [Daemon; 2] = [Daemon::Haproxy, Daemon::Stunnel];

    pub fn name(self) -> &'static str {
        match self {
            Daemon::Haproxy => "haproxy",
            Daemon::Stunnel => "stunnel",
        }
    }

    /// The configuration file of this daemon in the instance directory.
    pub fn config_file(self) -> &'static str {
        match self {
            Daemon::Haproxy => "haproxy.cfg",
            Daemon::Stunnel => "stunnel.conf",
        }
    }
}

#[derive(Debug, Clone)]
pub struct InstanceStore {
    instances: PathBuf,
    run: PathBuf,
}

impl InstanceStore {
    pub fn new(state_dir: &Path, run_dir: &Path) -> InstanceStore {
        InstanceStore {
            instances: state_dir.join("instances"),
            run: run_dir.to_path_buf(),
        }
    }

    pub fn instances_dir(&self) -> &Path {
        &self.instances
    }

    pub fn dir(&self, id: &InstanceId) -> PathBuf {
        self.instances.join(id.as_str())
    }

    pub fn run_dir(&self, id: &InstanceId) -> PathBuf {
        self.run.join(id.as_str())
    }

    pub fn config_path(&self, id: &InstanceId, daemon: Daemon) -> PathBuf {
        self.dir(id).join(daemon.config_file())
    }

    pub fn pid_file(&self, id: &InstanceId, daemon: Daemon) -> PathBuf {
        self.run_dir(id).join(format!("{}.pid", daemon.name()))
    }

    /// Every instance with at least one file, sorted.
    pub fn list(&self) -> io::Result<Vec<InstanceId>> {
        let entries = match std::fs::read_dir(&self.instances) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(InstanceId::parse)
                && self.has_files(&id)?
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Whether any file exists for the instance (the seed's rule for `GET /instances/:id`).
    pub fn has_files(&self, id: &InstanceId) -> io::Result<bool> {
        dir_has_files(&self.dir(id))
    }

    pub fn has_config(&self, id: &InstanceId, daemon: Daemon) -> bool {
        self.config_path(id, daemon).is_file()
    }
}

fn dir_has_files(dir: &Path) -> io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        // Temporary files of an interrupted write do not make an instance exist.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_file() || (kind.is_dir() && dir_has_files(&entry.path())?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One mutex per key, made on first use and dropped once nobody holds or waits for it,
/// so the map holds only the keys in use (not every id ever seen).
pub struct KeyedLocks<K> {
    map: std::sync::Mutex<std::collections::HashMap<K, std::sync::Arc<std::sync::Mutex<()>>>>,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            map: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> KeyedLocks<K> {
    /// The mutex of `key`; lock it to serialise work on that key. Entries nobody else
    /// holds are dropped on the way, so the map never outgrows the keys in use.
    pub fn get(&self, key: &K) -> std::sync::Arc<std::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, lock| std::sync::Arc::strong_count(lock) > 1);
        map.entry(key.clone()).or_default().clone()
    }

    /// Keys with a mutex right now.
    pub fn len(&self) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, lock| std::sync::Arc::strong_count(lock) > 1);
        map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The pid in a pid file if that process is alive and is the expected program.
pub fn running_pid(pid_file: &Path, program: &str) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
    process_is(pid, program).then_some(pid)
}

/// Whether process `pid` exists and runs `program` (guards against pid reuse).
pub fn process_is(pid: u32, program: &str) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
        return false;
    };
    comm.trim().starts_with(program) && process_state(pid).is_some_and(|s| s != 'Z')
}

pub use crate::process::process_state;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_instances_with_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = InstanceStore::new(dir.path(), &dir.path().join("run"));
        let a = InstanceId::parse("00000000-0000-0000-0000-00000000000a").unwrap();
        let b = InstanceId::parse("00000000-0000-0000-0000-00000000000b").unwrap();
        std::fs::create_dir_all(store.dir(&a).join("certificates")).unwrap();
        std::fs::create_dir_all(store.dir(&b)).unwrap();
        std::fs::create_dir_all(store.instances_dir().join("not-an-id")).unwrap();
        std::fs::write(store.instances_dir().join("not-an-id/x"), "x").unwrap();
        assert!(store.list().unwrap().is_empty());
        std::fs::write(store.dir(&a).join("certificates/x.pem"), "x").unwrap();
        std::fs::write(store.dir(&b).join(".haproxy.cfg.tmp.1.0"), "x").unwrap();
        assert_eq!(store.list().unwrap(), vec![a]);
    }

    #[test]
    fn keyed_locks_serialise_one_key_and_forget_unused_ones() {
        let locks = KeyedLocks::default();
        for i in 0..1000 {
            let lock = locks.get(&i);
            let _held = lock.lock().unwrap();
        }
        // The map itself, not only what `len` counts: at most the last key is left,
        // until the next call.
        let entries = locks.map.lock().unwrap().len();
        assert!(
            entries <= 1,
            "{entries} entries after 1000 keys used in turn"
        );
        assert_eq!(locks.len(), 0);
        let a = locks.get(&1);
        let again = locks.get(&1);
        assert!(std::sync::Arc::ptr_eq(&a, &again));
        let _held = a.lock().unwrap();
        assert!(again.try_lock().is_err(), "one key, one mutex");
        assert!(locks.get(&2).try_lock().is_ok(), "other keys are free");
        assert_eq!(locks.len(), 1);
    }

    #[test]
    fn pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("x.pid");
        assert_eq!(running_pid(&pid_file, "x"), None);
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(running_pid(&pid_file, me.trim()), Some(std::process::id()));
        assert_eq!(running_pid(&pid_file, "haproxy-not-me"), None);
    }
}
