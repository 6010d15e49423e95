//! Crash-safe file system helpers.
//!
//! Every file the daemon writes goes through [`write_atomic`]: a temporary file in the
//! same directory, fsync, rename over the target, fsync of the directory. A crash at any
//! moment leaves either the old file or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `data` to `path` atomically with the given permission bits.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(temporary_name(&name.to_string_lossy()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file and makes the removal durable. A missing file is not an error.
pub fn remove_durable(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent_dir(path)?)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// fsyncs a directory so that renames and unlinks in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a directory (and parents) with the given mode when missing.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
        sync_dir(parent_dir(dir)?)?;
    }
    Ok(())
}

fn parent_dir(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no parent",
        )),
    }
}

/// Longest part of the target's name a temporary name repeats: the rest of the temporary
/// name (dot, `.tmp.`, pid, counter) fits in the 255 bytes of `NAME_MAX` beside it.
const TEMPORARY_NAME_PREFIX: usize = 200;

/// `.NAME.tmp.PID.N`, with NAME cut to [`TEMPORARY_NAME_PREFIX`] bytes.
fn temporary_name(target: &str) -> String {
    let mut end = target.len().min(TEMPORARY_NAME_PREFIX);
    while !target.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        ".{}.tmp.{}.{}",
        &target[..end],
        std::process::id(),
        unique_suffix()
    )
}

/// Whether `name` is a temporary file [`write_atomic`] makes (left behind only by a
/// crash between its creation and its rename).
pub fn is_temporary(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let mut parts = rest.rsplitn(4, '.');
    let (Some(counter), Some(pid), Some(tmp), Some(target)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    tmp == "tmp" && digits(pid) && digits(counter) && !target.is_empty()
}

/// Removes, under `dir` and its subdirectories, the temporary files of writes a crash
/// interrupted; returns the paths removed. Run at start, before anything writes.
pub fn remove_leftovers(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            removed.extend(remove_leftovers(&entry.path())?);
        } else if entry.file_name().to_str().is_some_and(is_temporary) {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// [`remove_leftovers`] in `dir` only, not its subdirectories (a directory shared with
/// files that are not ours).
pub fn remove_leftovers_here(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.file_name().to_str().is_some_and(is_temporary) {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

use std::os::unix::fs::DirBuilderExt;

/// Takes an exclusive `flock` on `path` (created if missing), waiting for other holders;
/// released when the returned value is dropped. Serialises work across processes.
pub fn lock_exclusive(path: &Path) -> io::Result<nix::fcntl::Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_set_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.pem");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_write_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("f");
        assert!(write_atomic(&path, b"x", 0o644).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn temporary_names_stay_within_name_max_and_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}.pem", "a".repeat(251));
        assert_eq!(long.len(), 255);
        let path = dir.path().join(&long);
        write_atomic(&path, b"x", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"x");
        let tmp = temporary_name(&long);
        assert!(tmp.len() <= 255, "{}", tmp.len());
        assert!(is_temporary(&tmp));
        assert!(is_temporary(&temporary_name("haproxy.cfg")));
        for name in [
            "haproxy.cfg",
            ".hidden",
            ".x.tmp.1",
            ".tmp.1.2",
            ".x.tmp.a.1",
            "x.tmp.1.2",
        ] {
            assert!(!is_temporary(name), "{name}");
        }
        // A multi-byte name is cut on a character boundary.
        assert!(temporary_name(&"é".repeat(150)).len() <= 255);
    }

    #[test]
    fn leftovers_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("i/certificates");
        fs::create_dir_all(&sub).unwrap();
        fs::write(dir.path().join("i/haproxy.cfg"), "keep").unwrap();
        fs::write(dir.path().join("i/.haproxy.cfg.tmp.12.3"), "gone").unwrap();
        fs::write(sub.join(".a.pem.tmp.4.5"), "gone").unwrap();
        fs::write(sub.join("a.pem"), "keep").unwrap();
        let removed = remove_leftovers(dir.path()).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(dir.path().join("i/haproxy.cfg").exists() && sub.join("a.pem").exists());
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1);
        assert!(
            remove_leftovers(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn remove_durable_tolerates_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(!remove_durable(&path).unwrap());
        fs::write(&path, b"x").unwrap();
        assert!(remove_durable(&path).unwrap());
    }
}
