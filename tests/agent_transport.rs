//! The agent's transport, black-box: the real binary, real mTLS handshakes over TCP.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use rustls::AlertDescription;

const SEED_STATUS_KEYS: [&str; 12] = [
    "network_tx",
    "network_rx",
    "active_node",
    "haproxy_count",
    "hostname",
    "fencing_daemon_status",
    "stunnel_count",
    "user_cpu",
    "system_cpu",
    "software_irq",
    "load",
    "haproxy_count",
];

struct Setup {
    pki: Pki,
    server: Creds,
    client: Creds,
}

impl Setup {
    /// A copy of the server certificate and key that a test may replace.
    fn live_creds(&self) -> Creds {
        let live = Creds {
            cert: self.pki.path("live.crt"),
            key: self.pki.path("live.key"),
        };
        std::fs::copy(&self.server.cert, &live.cert).unwrap();
        std::fs::copy(&self.server.key, &live.key).unwrap();
        live
    }
}

fn setup() -> Setup {
    let pki = Pki::new();
    let server = pki.server("server", "agent-1");
    let client = pki.issue(
        "client",
        "controller-1",
        &["--client", "--san", "controller-1.example"],
    );
    Setup {
        pki,
        server,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_client_gets_status_with_the_seed_fields() {
    let s = setup();
    let agent = Agent::start(AgentOptions::new(&s.pki, &s.server));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));

    let resp = client.get(agent.addr, "/status").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["content-type"], "application/json");
    let v = resp.json();
    for key in SEED_STATUS_KEYS {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert!(v["haproxy_count"].is_string() && v["stunnel_count"].is_string());
    assert!(v["network_tx"].is_number() && v["user_cpu"].is_number());
    assert_eq!(v["load"].as_array().unwrap().len(), 3);

    let root = client.get(agent.addr, "/").await.unwrap().json();
    assert_eq!(root["appliance_id"], "agent-1");
    assert_eq!(root["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(root["api_version"].is_string());

    // The request log names the client.
    agent.wait_log("controller-1", Duration::from_secs(5));
    let log = agent.log_text();
    assert!(
        log.contains("path=/status")
            && log.contains("status=200")
            && log.contains("client_sans=controller-1.example")
            && log.contains("client_serial="),
        "{log}"
    );
    // A burst is logged whole, line by line, as soon as the agent is idle again.
    let mut conn = client.connect(agent.addr).await.unwrap();
    for _ in 0..500 {
        assert_eq!(conn.get("/status").await.unwrap().status, 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = agent.log_text();
        let lines = log.lines().filter(|l| l.contains("path=/status")).count();
        if lines == 501 {
            assert!(
                log.lines().all(|l| l.starts_with("20")),
                "a torn line: {log}"
            );
            break;
        }
        assert!(lines < 501, "{lines} lines for 501 requests");
        assert!(
            std::time::Instant::now() < deadline,
            "{lines} of 501 lines logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_or_method_is_403_and_json_on_request() {
    let s = setup();
    let agent = Agent::start(AgentOptions::new(&s.pki, &s.server));
    let mut conn = Client::new(&s.pki.ca_cert(), Some(&s.client))
        .connect(agent.addr)
        .await
        .unwrap();

    let r = conn.get("/no/such/thing").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (403, "Invalid request\n"));
    let r = conn.request("POST", "/status", b"", &[]).await.unwrap();
    assert_eq!(r.status, 403);
    let r = conn
        .request("DELETE", "/", b"", &[("accept", "application/json")])
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "invalid_request");

    let r = conn.get("/instances").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    let r = conn
        .get("/instances/7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7c")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (404, "Not found\n"));
    let r = conn
        .request(
            "GET",
            "/instances/not-a-uuid",
            b"",
            &[("accept", "application/json")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "bad_instance_id");
    let r = conn.get("/listeners").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let r = conn.get("/service_status").await.unwrap();
    assert_eq!(r.status, 200);

    let m = conn.get("/metrics").await.unwrap();
    assert_eq!(m.status, 200);
    assert!(
        m.body
            .contains("applianced_requests_total{route=\"/instances\",code=\"200\"} 1"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("applianced_certificate_not_after_timestamp_seconds"),
        "{}",
        m.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_in_the_handshake() {
    let s = setup();
    let crl = s.pki.path("ca.crl");
    let revoked = s.pki.client("revoked", "revoked-client");
    run_ok(&[
        "pki",
        "revoke",
        "--dir",
        s.pki.ca_dir().to_str().unwrap(),
        "--cert",
        revoked.cert.to_str().unwrap(),
    ]);
    run_ok(&[
        "pki",
        "crl",
        "--dir",
        s.pki.ca_dir().to_str().unwrap(),
        "--out",
        crl.to_str().unwrap(),
    ]);
    let agent = Agent::start(
        AgentOptions::new(&s.pki, &s.server)
            .arg("--crl")
            .arg(crl.to_str().unwrap()),
    );
    let ca = s.pki.ca_cert();

    // No certificate at all.
    assert_refused(
        &Client::new(&ca, None),
        agent.addr,
        AlertDescription::CertificateRequired,
    )
    .await;
    // A certificate from another CA; and from an impostor CA with the same name (the
    // signature check fails).
    let other = Pki::named("Other CA");
    let stranger = other.client("stranger", "controller-1");
    assert_refused(
        &Client::new(&ca, Some(&stranger)),
        agent.addr,
        AlertDescription::UnknownCA,
    )
    .await;
    let impostor = Pki::new();
    let forged = impostor.client("forged", "controller-1");
    assert_refused(
        &Client::new(&ca, Some(&forged)),
        agent.addr,
        AlertDescription::DecryptError,
    )
    .await;
    // Expired, and not yet valid.
    let expired = s.pki.issue(
        "expired",
        "old",
        &[
            "--client",
            "--not-before",
            "2020-01-01T00:00:00Z",
            "--not-after",
            "2021-01-01T00:00:00Z",
        ],
    );
    assert_refused(
        &Client::new(&ca, Some(&expired)),
        agent.addr,
        AlertDescription::CertificateExpired,
    )
    .await;
    let future = s.pki.issue(
        "future",
        "new",
        &[
            "--client",
            "--not-before",
            "2090-01-01T00:00:00Z",
            "--not-after",
            "2091-01-01T00:00:00Z",
        ],
    );
    assert_refused(
        &Client::new(&ca, Some(&future)),
        agent.addr,
        AlertDescription::CertificateExpired,
    )
    .await;
    // Revoked, listed in the CRL.
    assert_refused(
        &Client::new(&ca, Some(&revoked)),
        agent.addr,
        AlertDescription::CertificateRevoked,
    )
    .await;
    // Extended key usage without clientAuth.
    let server_only = s.pki.issue("server-only", "not-a-client", &["--server"]);
    assert_refused(
        &Client::new(&ca, Some(&server_only)),
        agent.addr,
        AlertDescription::UnsupportedCertificate,
    )
    .await;

    // The server keeps serving good clients, and counted every refusal.
    let good = Client::new(&ca, Some(&s.client));
    assert_eq!(good.get(agent.addr, "/status").await.unwrap().status, 200);
    let metrics = good.get(agent.addr, "/metrics").await.unwrap().body;
    for reason in [
        "no_certificate",
        "unknown_ca",
        "bad_certificate",
        "expired",
        "not_yet_valid",
        "revoked",
        "wrong_purpose",
    ] {
        assert!(
            metrics.contains(&format!(
                "applianced_tls_handshake_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_other_identities_and_logs_them() {
    let s = setup();
    let agent = Agent::start(
        AgentOptions::new(&s.pki, &s.server).toml("[server]\nallowed_clients = [\"controller-*\"]"),
    );
    let ca = s.pki.ca_cert();
    let outsider = s.pki.client("outsider", "intruder-9");
    assert_refused(
        &Client::new(&ca, Some(&outsider)),
        agent.addr,
        AlertDescription::AccessDenied,
    )
    .await;
    agent.wait_log("intruder-9", Duration::from_secs(5));
    assert!(agent.log_text().contains("not in server.allowed_clients"));
    let good = Client::new(&ca, Some(&s.client));
    assert_eq!(good.get(agent.addr, "/status").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_only_refuses_tls12() {
    let s = setup();
    let agent =
        Agent::start(AgentOptions::new(&s.pki, &s.server).toml("[server]\ntls13_only = true"));
    let out = std::process::Command::new("curl")
        .args(["-sS", "--tls-max", "1.2", "--cacert"])
        .arg(s.pki.ca_cert())
        .arg("--cert")
        .arg(&s.client.cert)
        .arg("--key")
        .arg(&s.client.key)
        .arg(format!("https://{}/status", agent.addr))
        .output()
        .unwrap();
    assert!(!out.status.success(), "TLS 1.2 was accepted");
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    assert_eq!(client.get(agent.addr, "/status").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_trickled_bodies_get_413_or_408() {
    let s = setup();
    let agent = Agent::start(
        AgentOptions::new(&s.pki, &s.server)
            .toml("[limits]\nmax_body_bytes = 2048\nbody_timeout = \"1s\""),
    );
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let big = vec![b'x'; 4096];
    let r = client
        .request(agent.addr, "PUT", "/certificate", &big)
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert!(r.body.contains("2048"), "{}", r.body);

    // Without a Content-Length (chunked), the limit still holds while reading.
    let mut tls = client.tls(agent.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"PUT /certificate HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        tls.write_all(b"400\r\n").await.unwrap();
        tls.write_all(&[b'y'; 0x400]).await.unwrap();
        tls.write_all(b"\r\n").await.unwrap();
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // A body that never finishes arriving is answered 408 at limits.body_timeout.
    let mut slow = client.tls(agent.addr).await.unwrap();
    slow.write_all(
        b"PUT /certificate HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_garbage_clients_are_dropped_without_hurting_others() {
    let s = setup();
    let agent = Agent::start(AgentOptions::new(&s.pki, &s.server).toml(
        "[limits]\nhandshake_timeout = \"1s\"\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"",
    ));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));

    // A silent TCP client is dropped at the handshake timeout...
    let mut silent = std::net::TcpStream::connect(agent.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // ...while others are served at once.
    let t = Instant::now();
    assert_eq!(client.get(agent.addr, "/status").await.unwrap().status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "served slowly: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let n = silent.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "silent client not closed");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // Garbage instead of a ClientHello: closed, server keeps serving.
    let mut garbage = std::net::TcpStream::connect(agent.addr).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: plain-http\r\n\r\n\x00\x01\x02garbage")
        .unwrap();
    let mut rest = Vec::new();
    let _ = garbage.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"),
        "plain HTTP was served"
    );

    // A client that completes TLS but never finishes its headers is dropped.
    let mut slow = client.tls(agent.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(b"GET /status HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "slow-header client was never dropped");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // An idle keep-alive connection is closed after the idle timeout.
    let mut idle = client.connect(agent.addr).await.unwrap();
    assert_eq!(idle.get("/status").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        idle.get("/status").await.is_err(),
        "idle connection still open"
    );

    assert_eq!(client.get(agent.addr, "/status").await.unwrap().status, 200);
    let metrics = client.get(agent.addr, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains("applianced_tls_handshake_failures_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
}

/// A keep-alive connection waits for the idle timeout between requests, not the header
/// timeout (which counts from a request's first byte), and is then closed cleanly, with a
/// TLS close_notify, so that a client's pool sees an orderly close rather than a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_last_the_idle_timeout_and_close_cleanly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let agent = Agent::start(
        AgentOptions::new(&s.pki, &s.server)
            .toml("[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"4s\""),
    );
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    const REQUEST: &[u8] = b"GET /status HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut tls = client.tls(agent.addr).await.unwrap();
        tls.write_all(REQUEST).await.unwrap();
        assert!(
            read_http1_response(&mut tls)
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        conns.push(tls);
    }
    // One answered before its body was sent, the body sent after: the body is not the
    // start of a next request, so this one is idle too.
    let mut early = client.tls(agent.addr).await.unwrap();
    early
        .write_all(b"PUT /no/such/route HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\n")
        .await
        .unwrap();
    let answer = read_http1_response(&mut early).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    early.write_all(b"body").await.unwrap();
    early.flush().await.unwrap();
    let served = Instant::now();
    let (quiet, mut reused, mut slow) = (conns.remove(0), conns.remove(0), conns.remove(0));

    // A request trickled after the last one is dropped at the header timeout of its
    // first byte, well before the idle timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    slow.write_all(b"GET /status HTTP/1.1\r\n").await.unwrap();
    let trickled = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut rest))
        .await
        .expect("trickled headers never dropped")
        .ok();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let waited = trickled.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && served.elapsed() < Duration::from_millis(3500),
        "dropped {waited:?} after the first byte"
    );

    // Idle past the header timeout: still open, and it serves the next request.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(served.elapsed())).await;
    reused.write_all(REQUEST).await.unwrap();
    let next = read_http1_response(&mut reused).await;
    assert!(
        next.unwrap().starts_with("HTTP/1.1 200"),
        "reused after idling"
    );

    // Idle for the idle timeout: closed, with a close_notify (a clean end of stream; a
    // bare TCP close reads as an unexpected EOF).
    for (mut conn, which) in [
        (quiet, "an idle connection"),
        (early, "after an early answer"),
    ] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(8), conn.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{which}: never closed"))
            .unwrap_or_else(|e| panic!("{which}: closed without a close_notify: {e}"));
        let idle = served.elapsed();
        assert!(
            idle >= Duration::from_millis(3900) && idle < Duration::from_secs(7),
            "{which}: closed after {idle:?} idle"
        );
    }
}

/// A request answered before its body is read (an unknown route's 403) does not cost
/// the client its keep-alive connection: the body is read and discarded, so the next
/// request on the same connection is served. The body is sent only once the answer has
/// come, as clients that send headers and body in two writes may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_left_unread_keeps_the_connection() {
    use tokio::io::AsyncWriteExt;
    let s = setup();
    let agent = Agent::start(AgentOptions::new(&s.pki, &s.server));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let mut tls = client.tls(agent.addr).await.unwrap();
    tls.write_all(b"PUT /no/such/route HTTP/1.1\r\nhost: a\r\ncontent-length: 13\r\n\r\n")
        .await
        .unwrap();
    let answer = read_http1_response(&mut tls).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    tls.write_all(b"{\"name\": \"0\"}").await.unwrap();
    tls.write_all(b"GET /status HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let next = read_http1_response(&mut tls).await;
    assert!(
        next.as_ref().is_ok_and(|n| n.starts_with("HTTP/1.1 200")),
        "the next request after an unread body: {next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_closes_extra_connections() {
    let s = setup();
    let agent =
        Agent::start(AgentOptions::new(&s.pki, &s.server).toml("[limits]\nmax_connections = 2"));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let mut a = client.connect(agent.addr).await.unwrap();
    let mut b = client.connect(agent.addr).await.unwrap();
    assert_eq!(a.get("/status").await.unwrap().status, 200);
    assert_eq!(b.get("/status").await.unwrap().status, 200);
    assert!(
        client.get(agent.addr, "/status").await.is_err(),
        "a third connection was served"
    );
    drop(a);
    // The slot frees once the server sees the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.get(agent.addr, "/status").await {
            Ok(r) => {
                assert_eq!(r.status, 200);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
    assert_eq!(b.get("/status").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_without_dropping_connections() {
    let s = setup();
    // The agent reads its certificate from files we replace.
    let live = s.live_creds();
    let agent = Agent::start(AgentOptions::new(&s.pki, &live));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));

    let mut open = client.connect(agent.addr).await.unwrap();
    assert_eq!(open.server_cn.as_deref(), Some("agent-1"));
    assert_eq!(open.get("/status").await.unwrap().status, 200);

    // A broken file: the old certificate stays, and the log says why.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    agent.signal(Signal::SIGHUP);
    agent.wait_log("keeping the current TLS material", Duration::from_secs(5));
    assert_eq!(
        client
            .connect(agent.addr)
            .await
            .unwrap()
            .server_cn
            .as_deref(),
        Some("agent-1")
    );

    let next = s.pki.server("next", "agent-2");
    std::fs::copy(&next.cert, &live.cert).unwrap();
    std::fs::copy(&next.key, &live.key).unwrap();
    agent.signal(Signal::SIGHUP);
    agent.wait_log("SIGHUP: TLS material reloaded", Duration::from_secs(5));

    let fresh = client.connect(agent.addr).await.unwrap();
    assert_eq!(fresh.server_cn.as_deref(), Some("agent-2"));
    // The connection opened before the swap still works.
    assert_eq!(open.get("/status").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_certificate_validates_writes_and_hot_swaps() {
    let s = setup();
    let live = s.live_creds();
    let agent = Agent::start(AgentOptions::new(&s.pki, &live));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let mut open = client.connect(agent.addr).await.unwrap();
    assert_eq!(open.get("/status").await.unwrap().status, 200);
    let json = [("accept", "application/json")];

    // Refusals leave everything as it was.
    let next = s.pki.server("next", "agent-2");
    let other = s.pki.server("other", "agent-3");
    let mut mismatched = std::fs::read(&other.key).unwrap();
    mismatched.extend(std::fs::read(&next.cert).unwrap());
    let foreign_pki = Pki::new();
    let foreign = foreign_pki.server("foreign", "agent-x");
    let expired = s.pki.issue(
        "expired",
        "agent-old",
        &[
            "--server",
            "--not-before",
            "2020-01-01T00:00:00Z",
            "--not-after",
            "2021-01-01T00:00:00Z",
        ],
    );
    let client_only = s.pki.client("client-only", "agent-c");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (mismatched, "cert_key_mismatch"),
        // A certificate alone renews the agent's own key's certificate: this one is for
        // another key.
        (std::fs::read(&next.cert).unwrap(), "cert_key_mismatch"),
        (std::fs::read(&next.key).unwrap(), "no_certificate"),
        (foreign.bundle(), "untrusted_chain"),
        (expired.bundle(), "cert_expired"),
        (client_only.bundle(), "wrong_purpose"),
        (b"garbage".to_vec(), "no_certificate"),
    ];
    let before = std::fs::read(&live.cert).unwrap();
    for (body, code) in cases {
        let r = open
            .request("PUT", "/certificate", &body, &json)
            .await
            .unwrap();
        assert_eq!(r.status, 409, "{code}: {}", r.body);
        assert_eq!(r.json()["code"], code);
    }
    assert_eq!(std::fs::read(&live.cert).unwrap(), before);
    assert_eq!(
        client
            .connect(agent.addr)
            .await
            .unwrap()
            .server_cn
            .as_deref(),
        Some("agent-1")
    );

    // A good bundle is written and served at once; the open connection stays.
    let r = open
        .request(
            "PUT",
            "/certificate",
            &next.bundle(),
            &[("expect", "100-continue")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.starts_with("OK\n"), "{}", r.body);
    assert_eq!(
        client
            .connect(agent.addr)
            .await
            .unwrap()
            .server_cn
            .as_deref(),
        Some("agent-2")
    );
    assert_eq!(open.get("/status").await.unwrap().status, 200);
    let on_disk = applianced::certs::load_certs(&live.cert).unwrap();
    assert_eq!(
        applianced::certs::CertInfo::parse(&on_disk[0])
            .unwrap()
            .subject_cn
            .as_deref(),
        Some("agent-2")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&live.key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // And it survives a restart.
    drop(open);
    drop(agent);
    let agent = Agent::start(AgentOptions::new(&s.pki, &live));
    assert_eq!(
        client
            .connect(agent.addr)
            .await
            .unwrap()
            .server_cn
            .as_deref(),
        Some("agent-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let s = setup();
    let mut agent = Agent::start(AgentOptions::new(&s.pki, &s.server));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let body = s.server.bundle();

    // A request whose body is still arriving when SIGTERM comes.
    let mut tls = client.tls(agent.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "PUT /certificate HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..100]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.signal(Signal::SIGTERM);
    agent.wait_log("shutting down", Duration::from_secs(5));

    // New connections are no longer accepted.
    assert!(client.get(agent.addr, "/status").await.is_err());

    tls.write_all(&body[100..]).await.unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    let status = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.log_text());
}

#[test]
fn curl_with_pki_files_works_and_without_cert_fails() {
    let s = setup();
    let agent = Agent::start(AgentOptions::new(&s.pki, &s.server));
    let url = format!("https://{}/status", agent.addr);
    let curl = |with_cert: bool, extra: &[&str]| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--fail", "--cacert"]).arg(s.pki.ca_cert());
        if with_cert {
            cmd.arg("--cert")
                .arg(&s.client.cert)
                .arg("--key")
                .arg(&s.client.key);
        }
        cmd.args(extra)
            .arg(&url)
            .output()
            .expect("curl is installed")
    };
    let ok = curl(true, &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(v.get("hostname").is_some());

    let h2 = curl(
        true,
        &["--http2", "-o", "/dev/null", "-w", "%{http_version}"],
    );
    assert_eq!(String::from_utf8_lossy(&h2.stdout), "2");

    let refused = curl(false, &[]);
    assert!(!refused.status.success());
    // A TLS failure (35 handshake, 55/56 send/receive on the alerted connection), never
    // an HTTP status (22 with --fail).
    assert!(
        matches!(refused.status.code(), Some(35 | 55 | 56)),
        "{refused:?}"
    );
    assert!(refused.stdout.is_empty());
}

#[test]
fn bad_configuration_exits_with_distinct_codes() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[server]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["agent", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lisen"),
        "{out:?}"
    );

    // Files that exist but hold no certificate: a TLS-material error.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let out = std::process::Command::new(bin())
        .args(["agent", "--listen", "127.0.0.1:1", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--cert")
        .arg(&junk)
        .arg("--key")
        .arg(&s.server.key)
        .arg("--client-ca")
        .arg(s.pki.ca_cert())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(79), "{out:?}");

    // A key that belongs to another certificate.
    let other = s.pki.server("other", "x");
    let out = std::process::Command::new(bin())
        .args(["config", "check", "--agent"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"/tmp\"\n[server]\nlisten = [\"127.0.0.1:1\"]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            s.server.cert.display(),
            other.key.display(),
            s.pki.ca_cert().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["config", "check", "--agent"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(79));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("do not match"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_crls_and_the_client_ca() {
    let s = setup();
    let ca_dir = s.pki.ca_dir();
    let ca_dir = ca_dir.to_str().unwrap();
    let crl = s.pki.path("live.crl");
    run_ok(&[
        "pki",
        "crl",
        "--dir",
        ca_dir,
        "--out",
        crl.to_str().unwrap(),
    ]);
    let bundle = s.pki.path("clients-ca.crt");
    std::fs::copy(s.pki.ca_cert(), &bundle).unwrap();
    let mut opts = AgentOptions::new(&s.pki, &s.server)
        .arg("--crl")
        .arg(crl.to_str().unwrap());
    opts.client_ca = bundle.clone();
    let agent = Agent::start(opts);
    let ca = s.pki.ca_cert();
    let client = Client::new(&ca, Some(&s.client));
    let mut open = client.connect(agent.addr).await.unwrap();
    assert_eq!(open.get("/status").await.unwrap().status, 200);

    // Revoked after start: refused once the new CRL is read on SIGHUP.
    run_ok(&[
        "pki",
        "revoke",
        "--dir",
        ca_dir,
        "--cert",
        s.client.cert.to_str().unwrap(),
    ]);
    run_ok(&[
        "pki",
        "crl",
        "--dir",
        ca_dir,
        "--out",
        crl.to_str().unwrap(),
    ]);
    assert_eq!(client.get(agent.addr, "/status").await.unwrap().status, 200);
    agent.signal(Signal::SIGHUP);
    agent.wait_log("SIGHUP: TLS material reloaded", Duration::from_secs(5));
    assert_refused(&client, agent.addr, AlertDescription::CertificateRevoked).await;
    // The connection opened before keeps working.
    assert_eq!(open.get("/status").await.unwrap().status, 200);

    // A second CA appended to the client CA bundle: with CRLs configured, its clients
    // stay refused until its CRL is published too (revocation status fails closed).
    let other = Pki::named("Second CA");
    let newcomer = other.client("newcomer", "controller-2");
    let newcomer_client = Client::new(&ca, Some(&newcomer));
    assert_refused(&newcomer_client, agent.addr, AlertDescription::UnknownCA).await;
    let mut both = std::fs::read(&bundle).unwrap();
    both.extend(std::fs::read(other.ca_cert()).unwrap());
    std::fs::write(&bundle, both).unwrap();
    agent.signal(Signal::SIGHUP);
    let reloads = |a: &Agent| {
        a.log_text()
            .matches("SIGHUP: TLS material reloaded")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads(&agent) < 2 {
        assert!(Instant::now() < deadline, "second reload not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_refused(&newcomer_client, agent.addr, AlertDescription::UnknownCA).await;
    let metrics = client_metrics(&s, agent.addr).await;
    assert!(
        metrics.contains("reason=\"unknown_revocation_status\""),
        "{metrics}"
    );

    let other_crl = other.path("other.crl");
    run_ok(&[
        "pki",
        "crl",
        "--dir",
        other.ca_dir().to_str().unwrap(),
        "--out",
        other_crl.to_str().unwrap(),
    ]);
    let mut crls = std::fs::read(&crl).unwrap();
    crls.extend(std::fs::read(&other_crl).unwrap());
    std::fs::write(&crl, crls).unwrap();
    agent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads(&agent) < 3 {
        assert!(Instant::now() < deadline, "third reload not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        newcomer_client
            .get(agent.addr, "/status")
            .await
            .unwrap()
            .status,
        200
    );
    // The revoked client of the first CA stays refused.
    assert_refused(&client, agent.addr, AlertDescription::CertificateRevoked).await;
}

/// `/metrics`, read with a fresh, allowed client of the test CA.
async fn client_metrics(s: &Setup, addr: std::net::SocketAddr) -> String {
    let fresh = s.pki.client("metrics-reader", "controller-9");
    Client::new(&s.pki.ca_cert(), Some(&fresh))
        .get(addr, "/metrics")
        .await
        .unwrap()
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let agent =
        Agent::start(AgentOptions::new(&s.pki, &s.server).toml("[limits]\nmax_body_bytes = 2048"));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let body = b"not a certificate";

    // The client waits for "100 Continue" before sending its body, as curl does.
    let mut tls = client.tls(agent.addr).await.unwrap();
    let head = format!(
        "PUT /certificate HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    tls.write_all(body).await.unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    let answer = format!("{interim}{}", String::from_utf8_lossy(&rest));
    assert!(answer.contains("HTTP/1.1 409"), "{answer}");

    // A declared body over the limit is refused at once, without "100 Continue".
    let mut tls = client.tls(agent.addr).await.unwrap();
    tls.write_all(b"PUT /certificate HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4096\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
