//! E-mail notifications, black-box, on SQLite and on PostgreSQL: the real controller
//! mails an appliance's `launched` and `stopped` events to its `notify_email` through a
//! real SMTP server (Python's aiosmtpd from PyPI, started by the test) that requires
//! STARTTLS and authentication; the messages are read back from what the server
//! received.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::controller::Controller;
use common::{Pki, free_port};
use serde_json::json;

const SERVER: &str = r#"
import asyncio, os, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port, out, cert, key, password = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

class Keep:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(out))
        path = os.path.join(out, f"{n:04}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(("X-Envelope-To: " + ",".join(envelope.rcpt_tos) + "\r\n").encode())
            f.write(envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 OK"

def authenticate(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"applianced" and auth_data.password == password.encode()
    return AuthResult(success=ok)

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
c = Controller(Keep(), hostname="127.0.0.1", port=int(port), tls_context=context,
               require_starttls=True, authenticator=authenticate, auth_required=True)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

struct SmtpServer {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// aiosmtpd on a loopback port, with a certificate of `pki`, keeping what it receives
/// in `dir/out`.
fn smtp_server(pki: &Pki, dir: &Path, password: &str) -> SmtpServer {
    let venv = common::venv("smtp-venv", &["aiosmtpd==1.4.6"]);
    let creds = pki.server("smtp", "smtp.example");
    let (script, out) = (dir.join("smtpd.py"), dir.join("out"));
    std::fs::write(&script, SERVER).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let port = free_port();
    let mut child = Command::new(venv.join("bin/python"))
        .arg(&script)
        .arg(port.to_string())
        .arg(&out)
        .arg(&creds.cert)
        .arg(&creds.key)
        .arg(password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready", "the SMTP server did not start");
    SmtpServer { child, port, out }
}

/// The messages the server received, oldest first, once there are `n`.
fn received(server: &SmtpServer, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&server.out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        if names.len() >= n {
            names.sort();
            return names
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} mails arrived",
            names.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn scenario(db_url: &str, net: u8) {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let smtp = smtp_server(&pki, dir.path(), "s3cret-Passw0rd");
    let password_file = dir.path().join("smtp.password");
    std::fs::write(&password_file, "s3cret-Passw0rd\n").unwrap();
    let c = Controller::start(
        db_url,
        &format!("127.0.{net}.1"),
        &format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"applianced <noreply@example.com>\"\n\
             tls = \"starttls\"\nusername = \"applianced\"\npassword_file = \"{pw}\"\nca_file = \"{ca}\"\n",
            port = smtp.port,
            pw = password_file.display(),
            ca = pki.ca_cert().display(),
        ),
    );
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    let r = c
        .call(
            &root,
            "POST",
            "/v1/appliances",
            r#"{"name": "x", "notify_email": "ops, <evil@example.com>"}"#,
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let body = json!({"name": "mailed", "notify_email": "ops@example.com"});
    let (accepted, done) = c
        .run_task(&root, "POST", "/v1/appliances", &body.to_string())
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let id = accepted["appliance"]["id"].as_str().unwrap().to_string();
    assert_eq!(accepted["appliance"]["notify_email"], "ops@example.com");
    let active = c
        .wait_state(&root, &id, "active", Duration::from_secs(30))
        .await;
    let up = &received(&smtp, 1)[0];
    assert!(up.contains("X-Envelope-To: ops@example.com"), "{up}");
    assert!(
        up.contains("From: applianced <noreply@example.com>"),
        "{up}"
    );
    assert!(
        up.contains("Subject: applianced: appliance mailed is up"),
        "{up}"
    );
    for wanted in [
        id.as_str(),
        active["address"].as_str().unwrap(),
        active["launched_at"].as_str().unwrap(),
        active["expires_at"].as_str().unwrap(),
    ] {
        assert!(up.contains(wanted), "{wanted}: {up}");
    }
    for secret in ["PRIVATE KEY", "BEGIN CERTIFICATE", "ssh-"] {
        assert!(!up.contains(secret), "{secret}: {up}");
    }
    let (_, done) = c
        .run_task(
            &root,
            "POST",
            &format!("/v1/appliances/{id}/actions"),
            r#"{"action": "stop"}"#,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let mails = received(&smtp, 2);
    assert!(
        mails[1].contains("Subject: applianced: appliance mailed has stopped"),
        "{}",
        mails[1]
    );
    // Each mail is a delivery of its event, delivered.
    let events = c.events(&root, &id).await;
    let mailed: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["deliveries"].as_array().unwrap().iter().map(move |d| {
                (
                    e["event"].as_str().unwrap().to_string(),
                    d["state"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    assert_eq!(
        mailed,
        [
            ("launched".to_string(), "delivered".to_string()),
            ("stopped".into(), "delivered".into())
        ]
    );
}

#[tokio::test]
async fn notifications_are_mailed_through_a_real_smtp_server_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&format!("sqlite://{}/c.db", dir.path().display()), 50).await;
}

#[tokio::test]
async fn notifications_are_mailed_through_a_real_smtp_server_on_postgres() {
    let pg = common::postgres::Postgres::start();
    scenario(&pg.url, 51).await;
}
