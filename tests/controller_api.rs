//! The controller's operator API, black-box: the real binary serving an admin listener
//! over HTTPS (no client certificate asked), on SQLite and on PostgreSQL; and admin
//! listeners that take client certificates naming users.

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
    start_with(pki, url, "")
}

/// A controller whose configuration ends with `extra` (more listeners).
fn start_with(pki: &Pki, url: &str, extra: &str) -> Controller {
    let server = pki.server("ctl", "controller.example");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{d}\"\n[database]\nurl = \"{url}\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\nzone = \"admin\"\ncert = \"{c}\"\nkey = \"{k}\"\n[[listeners]]\naddress = \"127.0.0.1:{p2}\"\nzone = \"appliance\"\ncert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{ca}\"\n{extra}",
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
    // Strict bodies: a required body, a JSON object and nothing else.
    for bad in [&b""[..], b"[]", br#"["x"]"#, b"null", br#""x""#, b"   "] {
        let r = conn.request("POST", "/v1/users", bad, &auth).await.unwrap();
        assert_eq!(
            (r.status, r.json()["type"].as_str()),
            (400, Some("urn:applianced:problem:invalid-input")),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    for bad in [
        &b"[]"[..],
        b"null",
        br#"{"ttl": 1}"#,
        br#"{"ttl_seconds": "x"}"#,
    ] {
        let r = conn
            .request(
                "POST",
                "/v1/tokens",
                bad,
                &[("authorization", &basic("root", &admin_password))],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
    }
    // A user name no user can have (a NUL byte, which PostgreSQL cannot even compare)
    // is an unknown user: 401 like any other.
    let r = conn
        .request(
            "POST",
            "/v1/tokens",
            b"",
            &[("authorization", &basic("ro\0ot", &admin_password))],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["type"].as_str()),
        (401, Some("urn:applianced:problem:unauthorized")),
        "{}",
        r.body
    );
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

/// Answers given before the body is read (a 405 from the router, a 401 before the body
/// is parsed) keep the client's connection: its next request on it is served. Each body
/// is sent only after the answer, as clients that write headers and body apart may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_before_the_body_keep_the_connection() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let c = start(
        &pki,
        &format!("sqlite://{}/controller.db", dir.path().display()),
    );
    let client = Client::new(&pki.ca_cert(), None);
    let mut tls = client.tls(c.addr).await.unwrap();
    let body = br#"{"name": "0"}"#;
    let wrong = basic("root", "wrong");
    for (head, status) in [
        ("DELETE /v1/teams HTTP/1.1\r\n".to_string(), "405"),
        (
            format!("POST /v1/tokens HTTP/1.1\r\nauthorization: {wrong}\r\n"),
            "401",
        ),
    ] {
        let head = format!(
            "{head}host: a\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        let answer = read_http1_response(&mut tls).await.unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        tls.write_all(body).await.unwrap();
    }
    tls.write_all(b"GET /v1/openapi.json HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let next = read_http1_response(&mut tls).await;
    assert!(
        next.as_ref().is_ok_and(|n| n.starts_with("HTTP/1.1 200")),
        "the next request after unread bodies: {next:?}"
    );
}

/// On an admin listener with a client CA, a verified certificate whose common name is a
/// user's name authenticates as that user without a token; `optional` also lets clients
/// in with a token alone, `required` refuses them in the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_client_certificates_name_users() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let server = pki.server("ctl-admin", "controller.example");
    let (optional, required) = (free_port(), free_port());
    let listener = |port: u16, auth: &str| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\nzone = \"admin\"\ncert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{ca}\"\nclient_auth = \"{auth}\"\n",
            c = server.cert.display(),
            k = server.key.display(),
            ca = pki.ca_cert().display(),
        )
    };
    let c = start_with(
        &pki,
        &format!("sqlite://{}/controller.db", dir.path().display()),
        &(listener(optional, "optional") + &listener(required, "required")),
    );
    let optional: std::net::SocketAddr = format!("127.0.0.1:{optional}").parse().unwrap();
    let required: std::net::SocketAddr = format!("127.0.0.1:{required}").parse().unwrap();
    let root_password = add_user(&c, "root", true);
    add_user(&c, "ops", false);
    let as_cert = |cn: &str| Client::new(&pki.ca_cert(), Some(&pki.client(cn, cn)));
    let (root, ops, stranger) = (as_cert("root"), as_cert("ops"), as_cert("stranger"));
    let anonymous = Client::new(&pki.ca_cert(), None);
    let r = anonymous
        .connect(optional)
        .await
        .unwrap()
        .request(
            "POST",
            "/v1/tokens",
            b"",
            &[("authorization", &basic("root", &root_password))],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let root_token = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let root_token = Some(root_token.as_str());

    // The certificate alone: its user, with that user's role.
    let r = get(&root, optional, "/v1/users", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    assert_eq!(get(&ops, optional, "/v1/users", None).await.status, 403);
    let r = get(&ops, optional, "/v1/appliances", None).await;
    assert_eq!((r.status, r.json()), (200, serde_json::json!([])));
    // A certificate naming nobody needs a token; a token of another user is refused.
    let r = get(&stranger, optional, "/v1/users", None).await;
    assert_unauthorized(&r, "names no user");
    assert_eq!(
        get(&stranger, optional, "/v1/users", root_token)
            .await
            .status,
        200
    );
    let r = get(&ops, optional, "/v1/users", root_token).await;
    assert_unauthorized(&r, "different users");
    // Optional: no certificate, a token works and nothing else does.
    assert_eq!(
        get(&anonymous, optional, "/v1/users", root_token)
            .await
            .status,
        200
    );
    assert_eq!(
        get(&anonymous, optional, "/v1/users", None).await.status,
        401
    );
    // A certificate from another CA is refused in the handshake, even where optional.
    let other = Pki::named("Other CA");
    let foreign = Client::new(
        &pki.ca_cert(),
        Some(&other.client("root-elsewhere", "root")),
    );
    assert_refused(&foreign, optional, rustls::AlertDescription::UnknownCA).await;

    // Required: no certificate, no connection; with one, as above.
    assert_refused(
        &anonymous,
        required,
        rustls::AlertDescription::CertificateRequired,
    )
    .await;
    assert_eq!(get(&root, required, "/v1/users", None).await.status, 200);
    // The listener without a client CA asks for no certificate: a token is needed.
    assert_eq!(get(&root, c.addr, "/v1/users", None).await.status, 401);
    assert_eq!(
        get(&root, c.addr, "/v1/users", root_token).await.status,
        200
    );

    // Deleting the user ends what its certificate can do.
    let users = get(&root, optional, "/v1/users", None).await.json();
    let ops_id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ops")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = root
        .connect(optional)
        .await
        .unwrap()
        .request("DELETE", &format!("/v1/users/{ops_id}"), b"", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        get(&ops, optional, "/v1/appliances", None).await.status,
        401
    );
}

/// A GET on a connection of its own, with a bearer token if given.
async fn get(
    client: &Client,
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Resp {
    let headers: Vec<(&str, &str)> = bearer.map(|b| ("authorization", b)).into_iter().collect();
    client
        .connect(addr)
        .await
        .unwrap()
        .request("GET", path, b"", &headers)
        .await
        .unwrap()
}

/// A 401 whose detail says `why`.
fn assert_unauthorized(r: &Resp, why: &str) {
    assert_eq!(r.status, 401, "{}", r.body);
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains(why), "{}", r.body);
}
