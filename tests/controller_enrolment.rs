//! Enrolment, black-box, with the real binaries on SQLite and PostgreSQL: an admin issues
//! a one-time token; `applianced agent --enrol` makes its key, sends its request to the
//! appliance listener (the controller recognised by its CA's fingerprint) and waits; an
//! admin accepts it; the agent writes its certificate and configuration and serves; the
//! controller pings it, renews its certificate for the key it keeps, refuses what the
//! `enrolled` backend cannot do, and forgets it. Replayed, expired and unknown tokens,
//! weak keys, rejection, automatic acceptance and a request flood are refused or handled
//! as the contract says.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::controller::Controller;
use common::machine::Machine;
use common::{Client, postgres};
use serde_json::{Value, json};

async fn issue(c: &Controller, root: &str, body: Value) -> Value {
    let r = c
        .call(root, "POST", "/v1/enrolment-tokens", &body.to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

/// The requests to join in `state`.
async fn enrolments(c: &Controller, root: &str, state: &str) -> Vec<Value> {
    let r = c
        .call(root, "GET", &format!("/v1/enrolments?state={state}"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().as_array().unwrap().clone()
}

/// Waits for a pending request named `name`.
async fn wait_pending(c: &Controller, root: &str, name: &str, m: &Machine) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = enrolments(c, root, "pending")
            .await
            .into_iter()
            .find(|e| e["name"] == name)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no pending request {name}: {}\n{}",
            m.log_text(),
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An admin accepts or rejects (`action`) a request to join.
async fn decide(c: &Controller, root: &str, id: &str, action: &str) -> common::Resp {
    c.call(root, "POST", &format!("/v1/enrolments/{id}/{action}"), "")
        .await
}

/// `POST /v1/enrolment-requests` on the appliance listener, without a client certificate.
async fn submit(c: &Controller, body: &Value) -> common::Resp {
    c.client()
        .request(
            c.appliance_zone,
            "POST",
            "/v1/enrolment-requests",
            body.to_string().as_bytes(),
        )
        .await
        .unwrap()
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    applianced::certs::sha256_hex(bytes)
}

fn leaf_serial(path: &Path) -> String {
    let certs = applianced::certs::load_certs(path).unwrap();
    applianced::certs::CertInfo::parse(&certs[0])
        .unwrap()
        .serial
}

async fn scenario(db_url: &str, net: u8) {
    let c = Controller::start(
        db_url,
        &format!("127.0.{net}.200"),
        "[appliances]\nheartbeat_interval = \"1s\"\n",
    );
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    let member_password = c.add_user("tenant", false);
    let tenant = c.token("tenant", &member_password).await;

    // Only admins issue tokens; the token and the command are shown once.
    let r = c
        .call(
            &tenant,
            "POST",
            "/v1/enrolment-tokens",
            r#"{"team": "tenant"}"#,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let issued = issue(&c, &root, json!({"team": "tenant"})).await;
    let token = issued["token"].as_str().unwrap().to_string();
    let command = issued["command"].as_str().unwrap().to_string();
    let ca_der = applianced::certs::load_certs(&c.ca_cert()).unwrap();
    let fingerprint = format!("sha256:{}", sha256_hex(&ca_der[0]));
    assert_eq!(issued["ca_fingerprint"], fingerprint.as_str());
    assert_eq!(
        command,
        format!(
            "applianced agent --enrol https://{} --token {token} --ca-fingerprint {fingerprint}",
            c.appliance_zone
        )
    );
    let listed = c.call(&root, "GET", "/v1/enrolment-tokens", "").await;
    assert_eq!(listed.status, 200);
    assert!(
        !listed.body.contains(&token),
        "the token is never shown again"
    );

    // A wrong fingerprint: the agent does not trust the controller, sends nothing.
    let mut impostor = Machine::new(net, 9);
    let wrong = command.replace(&fingerprint, &format!("sha256:{}", "0".repeat(64)));
    impostor.enrol(&wrong, &["--name", "impostor"]);
    assert_eq!(impostor.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(
        impostor.log_text().contains("pinned fingerprint"),
        "{}",
        impostor.log_text()
    );

    // The appliance enrols and waits for an admin.
    let mut edge = Machine::new(net, 1);
    edge.enrol(&command, &["--name", "edge-1"]);
    let pending = wait_pending(&c, &root, "edge-1", &edge).await;
    assert_eq!(pending["address"], edge.listen.ip().to_string());
    assert_eq!(pending["port"], edge.listen.port());
    assert_eq!(pending["key_algorithm"], "ecdsa-p256");
    assert_eq!(pending["peer_address"], "127.0.0.1");
    assert!(pending["appliance_id"].is_null());
    let r = c.call(&tenant, "GET", "/v1/enrolments", "").await;
    assert_eq!(r.status, 403, "admins only: {}", r.body);

    // The token is spent: replayed, it is refused and records nothing.
    let replay = submit(&c, &json!({"token": token, "csr": csr(), "port": 9443})).await;
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert_eq!(
        replay.json()["type"],
        "urn:applianced:problem:enrolment-refused"
    );
    assert!(replay.body.contains("used already"), "{}", replay.body);
    let unknown = submit(&c, &json!({"token": "f".repeat(64), "csr": csr()})).await;
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    assert_eq!(enrolments(&c, &root, "pending").await.len(), 1);

    // Accepted: the agent writes its certificate and configuration, and serves.
    let id = pending["id"].as_str().unwrap();
    let r = decide(&c, &root, id, "accept").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let accepted = r.json();
    assert_eq!(accepted["state"], "accepted");
    assert_eq!(accepted["decided_by"], "root");
    let appliance = accepted["appliance_id"].as_str().unwrap().to_string();
    let r = decide(&c, &root, id, "accept").await;
    assert_eq!(r.status, 409, "decided already: {}", r.body);
    edge.wait_serving();
    let config = std::fs::read_to_string(edge.state().join("agent.toml")).unwrap();
    assert!(
        config.contains(&format!("appliance_id = \"{appliance}\"")),
        "{config}"
    );
    assert!(!edge.state().join("enrolment.json").exists());
    let key_before = std::fs::read(edge.state().join("tls/agent.key")).unwrap();
    // The key never left the appliance: the controller keeps no directory for it.
    assert!(!c.state_dir().join("appliances").join(&appliance).exists());

    // An appliance of the tenant's team like any other: listed, pinged, reporting.
    let a = c
        .call(&tenant, "GET", &format!("/v1/appliances/{appliance}"), "")
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = a.json();
    assert_eq!(a["state"], "active", "{a}");
    assert_eq!(a["name"], "edge-1");
    let r = c
        .call(
            &root,
            "POST",
            &format!("/v1/appliances/{appliance}/ping"),
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.json()["reachable"].clone()),
        (200, Value::Bool(true)),
        "{}\n{}",
        r.body,
        edge.log_text()
    );
    edge_reports(&c, &root, &appliance, &edge).await;
    let events = c.events(&root, &appliance).await;
    let first = &events.as_array().unwrap()[0];
    assert_eq!(first["event"], "enrolled", "{events}");
    assert_eq!(first["actor"], "root");

    // The certificate is renewed for the key the appliance keeps.
    let serial = leaf_serial(&edge.state().join("tls/agent.crt"));
    let (_, done) = c
        .run_task(
            &root,
            "POST",
            &format!("/v1/appliances/{appliance}/actions"),
            r#"{"action": "rotate-certificate"}"#,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let renewed = leaf_serial(&edge.state().join("tls/agent.crt"));
    assert_ne!(serial, renewed);
    assert_eq!(
        std::fs::read(edge.state().join("tls/agent.key")).unwrap(),
        key_before,
        "the key stays the appliance's"
    );

    // What the enrolled backend cannot do is refused with its own type.
    for action in ["stop", "start", "suspend"] {
        let r = c
            .call(
                &root,
                "POST",
                &format!("/v1/appliances/{appliance}/actions"),
                &json!({"action": action}).to_string(),
            )
            .await;
        assert_eq!(r.status, 409, "{action}: {}", r.body);
        assert_eq!(
            r.json()["type"],
            "urn:applianced:problem:not-supported-by-backend",
            "{action}"
        );
    }

    // Shut down by its owner, it reports `stopped`; the same state directory starts it
    // again without --enrol, and it is active again.
    let pid = edge.child.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(edge.wait_exit(Duration::from_secs(20)), Some(0));
    c.wait_state(&root, &appliance, "stopped", Duration::from_secs(10))
        .await;
    edge.run(&[]);
    edge.wait_serving();
    c.wait_state(&root, &appliance, "active", Duration::from_secs(10))
        .await;
    let r = c
        .call(
            &root,
            "POST",
            &format!("/v1/appliances/{appliance}/ping"),
            "",
        )
        .await;
    assert_eq!(r.json()["reachable"], true, "{}", r.body);

    // Forgotten: deleted, its certificate revoked; the machine is its owner's.
    let (_, done) = c
        .run_task(&root, "DELETE", &format!("/v1/appliances/{appliance}"), "")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(edge.child.as_mut().unwrap().try_wait().unwrap().is_none());
    common::assert_refused(
        &Client::new(
            &c.ca_cert(),
            Some(&common::Creds {
                cert: edge.state().join("tls/agent.crt"),
                key: edge.state().join("tls/agent.key"),
            }),
        ),
        c.appliance_zone,
        rustls::AlertDescription::CertificateRevoked,
    )
    .await;

    // Rejected: the agent stops waiting and says why.
    let issued = issue(&c, &root, json!({"team": "tenant"})).await;
    let mut rejected = Machine::new(net, 2);
    rejected.enrol(issued["command"].as_str().unwrap(), &["--name", "edge-2"]);
    let pending = wait_pending(&c, &root, "edge-2", &rejected).await;
    let r = decide(&c, &root, pending["id"].as_str().unwrap(), "reject").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(rejected.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(
        rejected.log_text().contains("rejected"),
        "{}",
        rejected.log_text()
    );
    assert!(!rejected.state().join("agent.toml").exists());

    // A token that accepts at once: the appliance joins without an admin.
    // This one trusts the controller's CA from a file rather than by its fingerprint.
    let issued = issue(&c, &root, json!({"team": "tenant", "auto_accept": true})).await;
    let mut auto = Machine::new(net, 3);
    let with_file = issued["command"]
        .as_str()
        .unwrap()
        .replace(&format!("--ca-fingerprint {fingerprint}"), "--ca");
    let ca_file = c.ca_cert().display().to_string();
    auto.enrol(&with_file, &[ca_file.as_str()]);
    auto.wait_serving();
    let accepted = enrolments(&c, &root, "accepted").await;
    let joined = accepted
        .iter()
        .find(|e| e["address"] == auto.listen.ip().to_string())
        .expect("accepted at once");
    assert_eq!(joined["decided_by"], "auto-accept");
    assert!(joined["name"].as_str().unwrap().starts_with("enrolled-"));

    let auto_id = joined["appliance_id"].as_str().unwrap().to_string();

    // Only an appliance's own certificate answers for it: a record pointing at another
    // agent (here the forgotten edge, still serving) reaches nothing.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db_url).await.unwrap();
    sqlx::query("UPDATE appliances SET address = $1, agent_port = $2 WHERE id = $3")
        .bind(edge.listen.ip().to_string())
        .bind(i64::from(edge.listen.port()))
        .bind(&auto_id)
        .execute(&pool)
        .await
        .unwrap();
    let r = c
        .call(&root, "POST", &format!("/v1/appliances/{auto_id}/ping"), "")
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body.contains("presented the certificate of"),
        "{}",
        r.body
    );
    sqlx::query("UPDATE appliances SET address = $1, agent_port = $2 WHERE id = $3")
        .bind(auto.listen.ip().to_string())
        .bind(i64::from(auto.listen.port()))
        .bind(&auto_id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    // A request declaring a live appliance's address and port is not accepted; a
    // deleted token's waiting request is refused with it.
    let issued = issue(&c, &root, json!({"team": "tenant"})).await;
    let clash = json!({"token": issued["token"], "csr": csr(), "name": "clash",
        "address": auto.listen.ip().to_string(), "port": auto.listen.port()});
    let r = submit(&c, &clash).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let clash_id = r.json()["id"].as_str().unwrap().to_string();
    let r = decide(&c, &root, &clash_id, "accept").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body.contains("another appliance is reached"),
        "{}",
        r.body
    );
    let r = c
        .call(
            &root,
            "DELETE",
            &format!("/v1/enrolment-tokens/{}", issued["id"].as_str().unwrap()),
            "",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let rejected_now = enrolments(&c, &root, "rejected").await;
    assert!(rejected_now.iter().any(|e| e["id"] == clash_id.as_str()));

    // An expired token, a weak key.
    let issued = issue(&c, &root, json!({"team": "tenant", "ttl_seconds": 1})).await;
    let weak = weak_csr();
    let r = submit(&c, &json!({"token": issued["token"], "csr": weak})).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("too weak"), "{}", r.body);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = submit(&c, &json!({"token": issued["token"], "csr": csr()})).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("expired"), "{}", r.body);
    let r = c
        .call(
            &root,
            "POST",
            "/v1/enrolment-tokens",
            r#"{"team": "nobody"}"#,
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
}

/// The agent's own reports reach the controller: its heartbeats move the appliance's
/// last heartbeat on.
async fn edge_reports(c: &Controller, root: &str, id: &str, m: &Machine) {
    let first = c
        .call(root, "GET", &format!("/v1/appliances/{id}"), "")
        .await
        .json()["last_heartbeat_at"]
        .clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = c
            .call(root, "GET", &format!("/v1/appliances/{id}"), "")
            .await
            .json()["last_heartbeat_at"]
            .clone();
        if now != first {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat from the enrolled agent: {}",
            m.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A request for a 1024-bit RSA key (openssl: aws-lc will not sign with one).
fn weak_csr() -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=weak",
        ])
        .arg("-keyout")
        .arg(dir.path().join("k"))
        .output()
        .expect("openssl");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    scenario(&url, 56).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_on_postgres() {
    let pg = postgres::Postgres::start();
    scenario(&pg.url, 57).await;
}

/// A flood of requests to join from one address is cut off with 429 and a clear
/// problem; the controller keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_to_join_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let c = Controller::start(&url, "127.0.58.200", "");
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let r = submit(&c, &json!({"token": "0".repeat(64), "csr": "x"})).await;
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.json()["type"], "urn:applianced:problem:too-many-requests");
            assert_eq!(r.headers["retry-after"], "60");
        }
    }
    assert!(statuses[..30].iter().all(|s| *s == 422), "{statuses:?}");
    assert!(statuses[30..].iter().all(|s| *s == 429), "{statuses:?}");
    let password = c.add_user("root", true);
    c.token("root", &password).await;
}
