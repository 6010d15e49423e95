//! `applianced controller user add`, black-box, on SQLite and on PostgreSQL: the printed
//! password is the one stored (hashed), and names are unique.

mod common;

use std::process::Command;

use applianced::controller::{auth, store};
use common::*;

fn config(pki: &Pki, dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let server = pki.server("ctl", "controller.example");
    let cfg = dir.join("controller.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{d}\"\n[database]\nurl = \"{url}\"\n[[listeners]]\naddress = \"127.0.0.1:8443\"\nzone = \"admin\"\ncert = \"{c}\"\nkey = \"{k}\"\n[[listeners]]\naddress = \"127.0.0.1:8444\"\nzone = \"appliance\"\n",
            d = dir.display(),
            c = server.cert.display(),
            k = server.key.display(),
        ),
    )
    .unwrap();
    cfg
}

async fn add_users_and_check(url: &str) {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pki, dir.path(), url);
    let add = |name: &str, admin: bool| {
        let mut c = Command::new(bin());
        c.args(["controller", "user", "add", name, "--config"])
            .arg(&cfg);
        if admin {
            c.arg("--admin");
        }
        c.output().unwrap()
    };
    let out = add("alice", true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("password printed")
        .to_string();
    assert_eq!(password.len(), 24);
    assert!(stdout.contains("alice (admin)"), "{stdout}");

    let again = add("alice", false);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(!add("bad name", false).status.success());
    let bob = add("bob", false);
    assert!(String::from_utf8_lossy(&bob.stdout).contains("bob (member)"));

    let store = store::Store::open(url, 1).await.unwrap();
    let alice = store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(alice.role, store::Role::Admin);
    assert!(auth::verify_password(&password, &alice.password_hash));
    assert!(
        !alice.password_hash.contains(&password),
        "password stored in clear"
    );
    assert_eq!(store.users().await.unwrap().len(), 2);
    store.close().await;
}

#[tokio::test]
async fn user_add_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    add_users_and_check(&format!("sqlite://{}/c.db", dir.path().display())).await;
}

#[tokio::test]
async fn user_add_on_postgres() {
    let pg = postgres::Postgres::start();
    add_users_and_check(&pg.url).await;
}

/// Processes opening a new database at the same time (a controller starting while an
/// operator adds a user) find it migrated exactly once: no "table already exists".
#[test]
fn concurrent_first_opens_of_one_sqlite_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/c.db", dir.path().display());
    let cfg = config(&pki, dir.path(), &url);
    let racing: Vec<_> = (0..10)
        .map(|i| {
            Command::new(bin())
                .args([
                    "controller",
                    "user",
                    "add",
                    &format!("user-{i}"),
                    "--config",
                ])
                .arg(&cfg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in racing {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
