//! The controller's operator API, black-box: the real binary serving an admin listener
//! over HTTPS (no client certificate asked), on SQLite and on PostgreSQL.

mod common;

use std::process::{Child, Command, Stdio};

use base64::Engine;
use common::*;

struct Controller {
    child: Child,
    addr: std::net::SocketAddr,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(pki: &Pki, url: &str) -> Controller {
    let server = pki.server("ctl", "controller.example");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{d}\"\n[database]\nurl = \"{url}\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\nzone = \"admin\"\ncert = \"{c}\"\nkey = \"{k}\"\n[[listeners]]\naddress = \"127.0.0.1:{p2}\"\nzone = \"appliance\"\ncert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{ca}\"\n",
            d = dir.path().display(),
            c = server.cert.display(),
            k = server.key.display(),
            ca = pki.ca_cert().display(),
            p2 = free_port(),
        ),
    )
    .unwrap();
    let log = dir.path().join("controller.log");
    let mut child = Command::new(bin())
        .args(["controller", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(&mut child, addr, &log);
    Controller {
        child,
        addr,
        config,
        _dir: dir,
    }
}

fn add_user(c: &Controller, name: &str, admin: bool) -> String {
    common::controller::user_add(&c.config, name, admin)
}

fn basic(name: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
    )
}

async fn scenario(url: &str) {
    let pki = Pki::new();
    let c = start(&pki, url);
    let admin_password = add_user(&c, "root", true);
    let client = Client::new(&pki.ca_cert(), None);
    let mut conn = client.connect(c.addr).await.unwrap();

    // Tokens from basic auth; wrong passwords and unknown users look the same.
    let r = conn
        .request(
            "POST",
            "/v1/tokens",
            b"",
            &[("authorization", &basic("root", "wrong"))],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(r.json()["type"], "urn:applianced:problem:unauthorized");
    let r2 = conn
        .request(
            "POST",
            "/v1/tokens",
            b"",
            &[("authorization", &basic("nobody", "wrong"))],
        )
        .await
        .unwrap();
    assert_eq!(
        (r2.status, r2.json()["detail"].clone()),
        (401, r.json()["detail"].clone())
    );
    let r = conn
        .request(
            "POST",
            "/v1/tokens",
            br#"{"ttl_seconds": 999999}"#,
            &[("authorization", &basic("root", &admin_password))],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let t = r.json();
    let token = t["token"].as_str().unwrap().to_string();
    assert_eq!(t["user"]["role"], "admin");
    let expires = time::OffsetDateTime::parse(
        t["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lifetime = expires - time::OffsetDateTime::now_utc();
    assert!(
        lifetime <= time::Duration::hours(24) && lifetime > time::Duration::hours(23),
        "{lifetime}"
    );
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];

    // Users: an admin creates a member (the generated password is returned once).
    let r = conn
        .request("POST", "/v1/users", br#"{"name": "ops-1"}"#, &auth)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let member = r.json();
    let member_password = member["password"].as_str().unwrap().to_string();
    assert_eq!(member["role"], "member");
    let r = conn
        .request("POST", "/v1/users", br#"{"name": "ops-1"}"#, &auth)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["type"].as_str()),
        (409, Some("urn:applianced:problem:conflict"))
    );
    for bad in [
        &br#"{"name": "a b"}"#[..],
        br#"{"name": "x", "role": "god"}"#,
        br#"{"name": "x", "password": "short"}"#,
        b"not json",
        br#"{"name": "x", "extra": 1}"#,
    ] {
        let r = conn.request("POST", "/v1/users", bad, &auth).await.unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
    }
    let list = conn
        .request("GET", "/v1/users", b"", &auth)
        .await
        .unwrap()
        .json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ops-1", "root"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|u| u.get("password").is_none())
    );

    // A member sees itself, not the others, and cannot manage users.
    let r = conn
        .request(
            "POST",
            "/v1/tokens",
            b"",
            &[("authorization", &basic("ops-1", &member_password))],
        )
        .await
        .unwrap();
    let member_bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let as_member = [("authorization", member_bearer.as_str())];
    let member_id = member["id"].as_str().unwrap();
    assert_eq!(
        conn.request("GET", &format!("/v1/users/{member_id}"), b"", &as_member)
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        conn.request("GET", "/v1/users", b"", &as_member)
            .await
            .unwrap()
            .status,
        403
    );
    let root_id = list[1]["id"].as_str().unwrap();
    assert_eq!(
        conn.request("GET", &format!("/v1/users/{root_id}"), b"", &as_member)
            .await
            .unwrap()
            .status,
        403
    );

    // Without or with a forged token: 401. Unknown routes: 404 problems.
    assert_eq!(
        conn.request("GET", "/v1/users", b"", &[])
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        conn.request("GET", "/v1/users", b"", &[("authorization", "Bearer 00")])
            .await
            .unwrap()
            .status,
        401
    );
    let r = conn
        .request("GET", "/v1/nothing", b"", &auth)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["type"].as_str()),
        (404, Some("urn:applianced:problem:not-found"))
    );
    // An oversized body is refused from its declared length, before it is read (and
    // the connection is closed, so it goes on a connection of its own).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = client.tls(c.addr).await.unwrap();
        let head = format!(
            "POST /v1/users HTTP/1.1\r\nhost: c\r\nauthorization: {bearer}\r\ncontent-length: {}\r\n\r\n",
            70 * 1024
        );
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let n = raw.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    // Deleting a user revokes its tokens.
    assert_eq!(
        conn.request("DELETE", &format!("/v1/users/{member_id}"), b"", &auth)
            .await
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        conn.request("GET", &format!("/v1/users/{member_id}"), b"", &as_member)
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        conn.request("DELETE", &format!("/v1/users/{member_id}"), b"", &auth)
            .await
            .unwrap()
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&format!("sqlite://{}/controller.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_api_on_postgres() {
    let pg = postgres::Postgres::start();
    scenario(&pg.url).await;
}
