//! A throwaway PostgreSQL server for a test: initdb in a temporary directory, listening
//! on a loopback port, trust authentication, stopped and removed on drop. Needs the
//! server package (`scripts/install-deps` installs it).

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    pub url: String,
}

fn server_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server not installed (apt-get install postgresql; scripts/install-deps does)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL program as the `postgres` user when we are root (initdb refuses root).
fn pg(bin: &std::path::Path, program: &str) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = server_bin();
        let dir = tempfile::tempdir().unwrap();
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("user postgres");
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        let data = dir.path().join("data");
        let out = pg(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = super::free_port();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            dir.path().display()
        );
        let out = pg(&bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(dir.path().join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            bin,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
