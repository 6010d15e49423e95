//! Instances, black-box: the real agent driving the real haproxy and stunnel from the
//! distribution, on loopback.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const ID: &str = "7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7c";
const ID2: &str = "635bbdc6-65cd-41fc-b879-22c02aaf8951";

const CUSTOM_503: &str = "HTTP/1.0 503 Service Unavailable\r\nCache-Control: no-cache\r\nConnection: close\r\nContent-Type: text/html\r\n\r\n<html><body>down for maintenance</body></html>\n";

fn haproxy_config(frontend: u16, backend: u16) -> String {
    format!(
        "global\n    maxconn 256\ndefaults\n    mode http\n    timeout connect 300ms\n    timeout client 10s\n    timeout server 10s\n    retries 0\nfrontend fe\n    bind {{MYIP}}:{frontend}\n    default_backend be\nbackend be\n    server s1 127.0.0.2:{backend}\n"
    )
}

fn stunnel_config(accept: u16, connect: u16) -> String {
    format!(
        "[https]\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\ncert = {{CERTS}}/www.example.com.pem\n"
    )
}

struct Setup {
    pki: Pki,
    agent: Agent,
    api: Client,
}

fn setup() -> Setup {
    let pki = Pki::new();
    let server = pki.server("server", "agent-1");
    let client = pki.client("client", "controller-1");
    let agent =
        Agent::start(AgentOptions::new(&pki, &server).toml("[status]\ninterval = \"200ms\""));
    let api = Client::new(&pki.ca_cert(), Some(&client));
    Setup { pki, agent, api }
}

impl Setup {
    async fn put(&self, path: &str, body: &[u8]) -> Resp {
        let mut conn = self.api.connect(self.agent.addr).await.unwrap();
        conn.request("PUT", path, body, &[("accept", "application/json")])
            .await
            .unwrap()
    }

    async fn put_text(&self, path: &str, body: &[u8]) -> Resp {
        self.api
            .request(self.agent.addr, "PUT", path, body)
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Resp {
        self.api.get(self.agent.addr, path).await.unwrap()
    }

    async fn delete(&self, path: &str) -> Resp {
        self.api
            .request(self.agent.addr, "DELETE", path, b"")
            .await
            .unwrap()
    }

    fn instance_dir(&self, id: &str) -> std::path::PathBuf {
        self.agent.state_dir().join("instances").join(id)
    }

    /// An instance terminating TLS in stunnel (bundle `www.example.com.pem` with CN
    /// a.example.com) in front of haproxy in front of `backend`. Returns the haproxy
    /// and stunnel ports.
    async fn tls_instance(&self, backend: u16) -> (u16, u16) {
        let (fe, tls_port) = (free_port(), free_port());
        let bundle = self.www_bundle("a", "a.example.com");
        let uploads = [
            ("certificates/www.example.com.pem", bundle),
            ("haproxy", haproxy_config(fe, backend).into_bytes()),
            ("stunnel", stunnel_config(tls_port, fe).into_bytes()),
        ];
        for (file, body) in uploads {
            let r = self
                .put_text(&format!("/instances/{ID}/{file}"), &body)
                .await;
            assert_eq!(r.status, 201, "{file}: {}", r.body);
        }
        (fe, tls_port)
    }

    /// A bundle for www.example.com whose CN is `cn`.
    fn www_bundle(&self, name: &str, cn: &str) -> Vec<u8> {
        self.pki
            .issue(name, cn, &["--server", "--san", "www.example.com"])
            .bundle()
    }
}

fn pid_of(service_status: &str, daemon: &str) -> Option<u32> {
    service_status.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix(daemon)?
            .trim()
            .strip_prefix("running (pid ")?
            .strip_suffix(')')?
            .parse()
            .ok()
    })
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_balances_to_the_backend_and_serves_the_custom_503_when_it_is_down() {
    let s = setup();
    let backend = Backend::start("hello from the backend").await;
    let fe = free_port();

    // The 503 page can come first; there is no haproxy yet to reload.
    let r = s
        .put_text(&format!("/instances/{ID}/custom503"), CUSTOM_503.as_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s
        .put_text(
            &format!("/instances/{ID}/haproxy"),
            haproxy_config(fe, backend.port).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.starts_with("OK\n"), "{}", r.body);

    let through = http_get(fe).unwrap();
    assert!(
        through.starts_with("HTTP/1.1 200") && through.ends_with("hello from the backend"),
        "{through}"
    );

    // What was uploaded is what GET returns, placeholders and all.
    let got = s.get(&format!("/instances/{ID}/haproxy")).await;
    assert_eq!(
        (got.status, got.body),
        (200, haproxy_config(fe, backend.port))
    );
    assert_eq!(
        s.get(&format!("/listeners/{ID}/custom503")).await.body,
        CUSTOM_503
    );

    // The daemon is reported everywhere.
    let status = s.get("/service_status").await.body;
    assert!(
        status.starts_with(ID) && status.lines().next().unwrap().ends_with("OK"),
        "{status}"
    );
    let pid = pid_of(&status, "haproxy").expect("haproxy running");
    assert!(alive(pid));
    let listener = s.get(&format!("/listeners/{ID}")).await.json();
    assert_eq!(
        (
            listener["haproxy"].as_str(),
            listener["status"].as_str(),
            listener["type"].as_str()
        ),
        (Some("running"), Some("OK"), Some("HTTP"))
    );
    assert_eq!(s.get("/instances").await.body, format!("{ID}\n"));
    wait_for("haproxy_count 1", async || {
        s.get("/status").await.json()["haproxy_count"] == "1"
    })
    .await;

    // Backend down: the custom page is what the client gets.
    backend.stop().await;
    let down = http_get(fe).unwrap();
    assert!(down.starts_with("HTTP/1.0 503"), "{down}");
    assert!(down.contains("down for maintenance"), "{down}");

    // Replacing the page reloads haproxy gracefully (same master pid).
    let page2 = CUSTOM_503.replace("maintenance", "an upgrade");
    assert_eq!(
        s.put_text(&format!("/instances/{ID}/custom503"), page2.as_bytes())
            .await
            .status,
        201
    );
    assert!(http_get(fe).unwrap().contains("down for an upgrade"));
    assert_eq!(
        pid_of(&s.get("/service_status").await.body, "haproxy"),
        Some(pid)
    );

    // Reload results are counted in /metrics.
    let metrics = s.get("/metrics").await.body;
    for line in [
        "applianced_daemon_operations_total{daemon=\"haproxy\",operation=\"start\",result=\"ok\"} 1",
        "applianced_daemon_operations_total{daemon=\"haproxy\",operation=\"reload\",result=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing: {metrics}");
    }

    // Removing it restores haproxy's own 503.
    assert_eq!(
        s.delete(&format!("/instances/{ID}/custom503")).await.status,
        200
    );
    assert!(!http_get(fe).unwrap().contains("down for"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_haproxy_configs_are_refused_and_the_old_one_keeps_serving() {
    let s = setup();
    let backend = Backend::start("still here").await;
    let fe = free_port();
    let good = haproxy_config(fe, backend.port);
    assert_eq!(
        s.put_text(&format!("/instances/{ID}/haproxy"), good.as_bytes())
            .await
            .status,
        201
    );
    let pid = pid_of(&s.get("/service_status").await.body, "haproxy").unwrap();

    // Rejected by haproxy -c: 409 with the checker's output, nothing changed.
    let broken = good.replace(
        "default_backend be",
        "default_backend be\n    frobnicate yes",
    );
    let r = s
        .put(&format!("/instances/{ID}/haproxy"), broken.as_bytes())
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let j = r.json();
    assert_eq!(j["code"], "invalid_config");
    assert!(j["details"].as_str().unwrap().contains("frobnicate"), "{j}");
    let text = s
        .put_text(&format!("/instances/{ID}/haproxy"), broken.as_bytes())
        .await;
    assert!(
        text.body.starts_with("Invalid configuration\n"),
        "{}",
        text.body
    );
    assert_eq!(s.get(&format!("/instances/{ID}/haproxy")).await.body, good);
    assert!(http_get(fe).unwrap().ends_with("still here"));

    // Passes haproxy -c, but the reload fails (the new address is taken): rolled back.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let clash = good.replace(
        &format!("bind {{MYIP}}:{fe}"),
        &format!("bind {{MYIP}}:{fe}\n    bind 127.0.0.1:{taken_port}"),
    );
    let r = s
        .put(&format!("/instances/{ID}/haproxy"), clash.as_bytes())
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["code"], "apply_failed", "{}", r.body);
    assert_eq!(s.get(&format!("/instances/{ID}/haproxy")).await.body, good);
    assert!(http_get(fe).unwrap().ends_with("still here"));
    assert_eq!(
        pid_of(&s.get("/service_status").await.body, "haproxy"),
        Some(pid)
    );

    // An invalid config for a new instance leaves no trace of it.
    let r = s
        .put(
            &format!("/instances/{ID2}/haproxy"),
            b"this is not haproxy\n",
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(s.get(&format!("/instances/{ID2}")).await.status, 404);
    assert!(!s.instance_dir(ID2).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_through_stunnel_shows_the_uploaded_certificate_and_switches_without_loss() {
    let s = setup();
    let backend = Backend::start("secure hello").await;
    let (fe, tls_port) = (free_port(), free_port());
    let ca = s.pki.ca_cert();

    let r = s
        .put_text(
            &format!("/instances/{ID}/certificates/www.example.com.pem"),
            &s.www_bundle("a", "a.example.com"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        s.put_text(
            &format!("/instances/{ID}/haproxy"),
            haproxy_config(fe, backend.port).as_bytes()
        )
        .await
        .status,
        201
    );
    let r = s
        .put_text(
            &format!("/instances/{ID}/stunnel"),
            stunnel_config(tls_port, fe).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let (cn, body) = https_get(&ca, tls_port, "www.example.com").await.unwrap();
    assert_eq!(cn, "a.example.com");
    assert!(body.ends_with("secure hello"), "{body}");
    let listener = s.get(&format!("/listeners/{ID}")).await.json();
    assert_eq!(
        (listener["type"].as_str(), listener["stunnel"].as_str()),
        (Some("HTTPS"), Some("running"))
    );
    let key_file = s.instance_dir(ID).join("certificates/www.example.com.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A stream of requests, each on a new TLS connection, runs across the switch and
    // loses nothing: stunnel reloads on SIGHUP and keeps the sockets it was handed.
    let switched = Arc::new(AtomicBool::new(false));
    let stream = {
        let ca = ca.clone();
        stream_across(switched.clone(), move || {
            let ca = ca.clone();
            async move {
                match https_get(&ca, tls_port, "www.example.com").await {
                    Ok((cn, body)) if body.ends_with("secure hello") => Ok(cn),
                    other => Err(format!("{other:?}")),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = s
        .put_text(
            &format!("/instances/{ID}/certificates/www.example.com.pem"),
            &s.www_bundle("b", "b.example.com"),
        )
        .await;
    switched.store(true, Ordering::SeqCst);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.contains("stunnel reloaded"), "{}", r.body);
    let (ok, failed, cns) = stream.await.unwrap();
    assert!(ok > 20, "only {ok} requests");
    assert!(
        cns.contains("a.example.com") && cns.contains("b.example.com"),
        "{cns:?}"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the switch: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(
        https_get(&ca, tls_port, "www.example.com").await.unwrap().0,
        "b.example.com"
    );
    assert_eq!(s.get("/status").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_terminating_tls_switches_certificates_without_loss() {
    let s = setup();
    let backend = Backend::start("haproxy tls").await;
    let port = free_port();
    let ca = s.pki.ca_cert();
    let config = format!(
        "defaults\n    mode http\n    timeout connect 300ms\n    timeout client 10s\n    timeout server 10s\nfrontend fe\n    bind 127.0.0.1:{port} ssl crt {{CERTS}}/www.example.com.pem\n    default_backend be\nbackend be\n    server s1 127.0.0.2:{}\n",
        backend.port
    );
    assert_eq!(
        s.put_text(
            &format!("/instances/{ID}/certificates/www.example.com.pem"),
            &s.www_bundle("a", "a.example.com")
        )
        .await
        .status,
        201
    );
    let r = s
        .put_text(&format!("/instances/{ID}/haproxy"), config.as_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        https_get(&ca, port, "www.example.com").await.unwrap().0,
        "a.example.com"
    );

    let switched = Arc::new(AtomicBool::new(false));
    let stream = {
        let ca = ca.clone();
        stream_across(switched.clone(), move || {
            let ca = ca.clone();
            async move {
                match https_get(&ca, port, "www.example.com").await {
                    Ok((cn, body)) if body.ends_with("haproxy tls") => Ok(cn),
                    other => Err(format!("{other:?}")),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.put_text(
            &format!("/instances/{ID}/certificates/www.example.com.pem"),
            &s.www_bundle("b", "b.example.com")
        )
        .await
        .status,
        201
    );
    switched.store(true, Ordering::SeqCst);
    let (ok, failed, cns) = stream.await.unwrap();
    assert_eq!(
        cns.len(),
        2,
        "both certificates served during the stream: {cns:?}"
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 20);
    assert_eq!(
        https_get(&ca, port, "www.example.com").await.unwrap().0,
        "b.example.com"
    );

    // The certificate is in use: deleting it is refused and nothing is lost.
    let r = s
        .api
        .connect(s.agent.addr)
        .await
        .unwrap()
        .request(
            "DELETE",
            &format!("/instances/{ID}/certificates/www.example.com.pem"),
            b"",
            &[("accept", "application/json")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["code"], "certificate_in_use");
    assert!(
        s.instance_dir(ID)
            .join("certificates/www.example.com.pem")
            .exists()
    );
    assert_eq!(
        https_get(&ca, port, "www.example.com").await.unwrap().0,
        "b.example.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stunnel_config_that_cannot_start_is_rolled_back() {
    let s = setup();
    let backend = Backend::start("tls backend").await;
    let ca = s.pki.ca_cert();
    let (fe, tls_port) = s.tls_instance(backend.port).await;
    let good = stunnel_config(tls_port, fe);

    // Its new address is taken: stunnel cannot start; the old config and daemon return.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = stunnel_config(taken.local_addr().unwrap().port(), fe);
    let r = s
        .put(&format!("/instances/{ID}/stunnel"), bad.as_bytes())
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let j = r.json();
    assert_eq!(j["code"], "apply_failed");
    assert!(
        j["details"]
            .as_str()
            .unwrap()
            .contains("Address already in use"),
        "{j}"
    );
    assert_eq!(s.get(&format!("/instances/{ID}/stunnel")).await.body, good);
    assert!(
        https_get(&ca, tls_port, "www.example.com")
            .await
            .unwrap()
            .1
            .ends_with("tls backend")
    );

    // Refused before stunnel is touched: syntax, managed options, missing files.
    for (config, needle) in [
        ("[x]\nthis line is wrong\n".to_string(), "line 2"),
        (
            format!("pid = /tmp/elsewhere.pid\n{good}"),
            "managed by the agent",
        ),
        (
            good.replace("www.example.com.pem", "missing.pem"),
            "no such file",
        ),
    ] {
        let r = s
            .put(&format!("/instances/{ID}/stunnel"), config.as_bytes())
            .await;
        assert_eq!(r.status, 409, "{}", r.body);
        let j = r.json();
        assert_eq!(j["code"], "invalid_config");
        assert!(j["details"].as_str().unwrap().contains(needle), "{j}");
    }
    assert_eq!(s.get(&format!("/instances/{ID}/stunnel")).await.body, good);
    assert!(https_get(&ca, tls_port, "www.example.com").await.is_ok());

    // The stunnel config refers to the bundle: deleting it is refused.
    let r = s
        .delete(&format!("/instances/{ID}/certificates/www.example.com.pem"))
        .await;
    assert_eq!(r.status, 409);
    assert!(r.body.starts_with("Certificate is used"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_bundle_is_409_with_its_code_and_nothing_is_written() {
    let s = setup();
    let www = s.pki.issue("www", "www.example.com", &["--server"]);
    let other = s.pki.issue("other", "other.example.com", &["--server"]);
    let read = |p: &Path| String::from_utf8(std::fs::read(p).unwrap()).unwrap();
    let (www_key, www_chain, other_key) = (read(&www.key), read(&www.cert), read(&other.key));
    let leaf_only = www_chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    let ca_pem = read(&s.pki.ca_cert());
    let other_leaf = read(&other.cert)
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    let encrypted = format!(
        "{begin}\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n{end}\n{www_chain}",
        begin = applianced::certs::ENCRYPTED_KEY_MARKER,
        end = applianced::certs::ENCRYPTED_KEY_MARKER.replace("BEGIN", "END")
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("www.example.com.pem", www_key.clone(), "no_certificate"),
        ("www.example.com.pem", www_chain.clone(), "no_private_key"),
        (
            "www.example.com.pem",
            format!("{other_key}{www_chain}"),
            "cert_key_mismatch",
        ),
        (
            "wrong.example.com.pem",
            format!("{www_key}{www_chain}"),
            "bad_filename",
        ),
        (
            "www.example.com.crt",
            format!("{www_key}{www_chain}"),
            "bad_filename",
        ),
        (
            "www.example.com.pem",
            format!("{www_key}{leaf_only}{other_leaf}{ca_pem}"),
            "bad_chain",
        ),
        ("www.example.com.pem", encrypted, "encrypted_key"),
        (
            "www.example.com.pem",
            "\u{1}\u{2}binary garbage".into(),
            "no_certificate",
        ),
        (
            "www.example.com.pem",
            "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n".into(),
            "invalid_pem",
        ),
    ];
    for (name, body, code) in cases {
        let r = s
            .put(
                &format!("/instances/{ID}/certificates/{name}"),
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 409, "{code}: {}", r.body);
        assert_eq!(r.json()["code"], code, "{}", r.body);
    }
    let text = s
        .put_text(
            &format!("/instances/{ID}/certificates/www.example.com.pem"),
            www_chain.as_bytes(),
        )
        .await;
    assert_eq!(text.body, "No RSA key found\n");
    let text = s
        .put_text(
            &format!("/instances/{ID}/certificates/www.example.com.pem"),
            format!("{other_key}{www_chain}").as_bytes(),
        )
        .await;
    assert_eq!(text.body, "Certificate and key do not match\n");
    // Nothing was written: the instance does not exist.
    assert_eq!(s.get(&format!("/instances/{ID}")).await.status, 404);
    assert!(!s.instance_dir(ID).join("certificates").exists());

    // The good bundle (ECDSA here; RSA too) is accepted; an expired one with a warning.
    let r = s
        .put_text(
            &format!("/instances/{ID}/certificates/www.example.com.pem"),
            format!("{www_key}{www_chain}").as_bytes(),
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (201, "OK\n"));
    let rsa = s.pki.issue(
        "rsa",
        "rsa.example.com",
        &["--server", "--key-type", "rsa2048"],
    );
    assert_eq!(
        s.put_text(
            &format!("/instances/{ID}/certificates/rsa.example.com.pem"),
            &rsa.bundle()
        )
        .await
        .status,
        201
    );
    let wildcard = s.pki.issue("wild", "*.example.org", &["--server"]);
    assert_eq!(
        s.put_text(
            &format!("/instances/{ID}/certificates/WILDCARD.example.org.pem"),
            &wildcard.bundle()
        )
        .await
        .status,
        201
    );
    let old = s.pki.issue(
        "old",
        "old.example.com",
        &[
            "--server",
            "--not-before",
            "2020-01-01T00:00:00Z",
            "--not-after",
            "2021-01-01T00:00:00Z",
        ],
    );
    let r = s
        .put_text(
            &format!("/instances/{ID}/certificates/old.example.com.pem"),
            &old.bundle(),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(
        r.body.contains("warning: Certificate expired"),
        "{}",
        r.body
    );
    assert_eq!(
        s.get(&format!("/instances/{ID}/certificates/www.example.com.pem"))
            .await
            .body,
        format!("{www_key}{www_chain}")
    );

    // Bad names never reach the disk; size limits hold.
    assert_eq!(
        s.put(&format!("/instances/{ID}/certificates/..pem"), b"x")
            .await
            .json()["code"],
        "bad_filename"
    );
    assert_eq!(
        s.put("/instances/not-a-uuid/certificates/a.pem", b"x")
            .await
            .status,
        400
    );
    let r = s
        .put(
            &format!("/instances/{ID}/custom503"),
            &vec![b'x'; 17 * 1024],
        )
        .await;
    assert_eq!(r.status, 413);
    let r = s
        .put(
            &format!("/instances/{ID}/custom503"),
            b"<html>not a response</html>",
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (409, Some("invalid_custom503"))
    );

    // Deleting removes the file, then the directory once empty.
    for name in [
        "www.example.com.pem",
        "rsa.example.com.pem",
        "WILDCARD.example.org.pem",
        "old.example.com.pem",
    ] {
        assert_eq!(
            s.delete(&format!("/instances/{ID}/certificates/{name}"))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        s.delete(&format!("/instances/{ID}/certificates/www.example.com.pem"))
            .await
            .status,
        404
    );
    assert!(!s.instance_dir(ID).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_survive_kill_9_of_the_agent_and_are_adopted_then_deleted() {
    let mut s = setup();
    let backend = Backend::start("survivor").await;
    let ca = s.pki.ca_cert();
    let (fe, tls_port) = s.tls_instance(backend.port).await;
    let status = s.get("/service_status").await.body;
    let (hp, sp) = (
        pid_of(&status, "haproxy").unwrap(),
        pid_of(&status, "stunnel").unwrap(),
    );

    s.agent.kill9();
    // With no agent at all, the load balancer keeps serving.
    assert!(http_get(fe).unwrap().ends_with("survivor"));
    assert!(
        https_get(&ca, tls_port, "www.example.com")
            .await
            .unwrap()
            .1
            .ends_with("survivor")
    );

    s.agent.start_again();
    let status = s.get("/service_status").await.body;
    assert_eq!(
        (pid_of(&status, "haproxy"), pid_of(&status, "stunnel")),
        (Some(hp), Some(sp)),
        "{status}"
    );
    wait_for("counts", async || {
        let v = s.get("/status").await.json();
        v["haproxy_count"] == "1" && v["stunnel_count"] == "1"
    })
    .await;
    // The adopted haproxy still reloads.
    assert_eq!(
        s.put_text(&format!("/instances/{ID}/custom503"), CUSTOM_503.as_bytes())
            .await
            .status,
        201
    );
    assert!(http_get(fe).unwrap().ends_with("survivor"));

    let r = s.delete(&format!("/instances/{ID}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.starts_with("OK\n")
            && r.body.contains("haproxy daemon")
            && r.body.contains("killed"),
        "{}",
        r.body
    );
    assert!(!alive(hp) && !alive(sp));
    assert!(!s.instance_dir(ID).exists());
    assert!(!s.agent.run_dir().join(ID).exists());
    assert!(http_get(fe).is_err());
    assert_eq!(s.get(&format!("/instances/{ID}")).await.status, 404);
    assert_eq!(s.delete(&format!("/instances/{ID}")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_are_serialised_per_instance_and_parallel_across_instances() {
    let s = setup();
    let backend = Backend::start("parallel").await;
    let (fe1, fe2) = (free_port(), free_port());
    let mut tasks = Vec::new();
    for i in 0..4 {
        for (id, fe) in [(ID, fe1), (ID2, fe2)] {
            let api = s.api.clone();
            let addr = s.agent.addr;
            let body = format!("# upload {i}\n{}", haproxy_config(fe, backend.port));
            tasks.push(tokio::spawn(async move {
                api.request(
                    addr,
                    "PUT",
                    &format!("/instances/{id}/haproxy"),
                    body.as_bytes(),
                )
                .await
                .unwrap()
                .status
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    for (id, fe) in [(ID, fe1), (ID2, fe2)] {
        let cfg = s.get(&format!("/instances/{id}/haproxy")).await.body;
        assert!(
            cfg.starts_with("# upload ") && cfg.ends_with(&haproxy_config(fe, backend.port)),
            "{cfg}"
        );
        assert!(http_get(fe).unwrap().ends_with("parallel"));
    }
    let status = s.get("/service_status").await.body;
    assert_eq!(status.matches("running (pid").count(), 2, "{status}");
    for id in [ID, ID2] {
        assert_eq!(s.delete(&format!("/instances/{id}")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_write_nothing_outside_the_state_directory() {
    let s = setup();
    let root = s.agent.dir.path().to_path_buf();
    let snapshot = |dir: &Path| {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone())
                }
                files.push(p);
            }
        }
        files.sort();
        files
    };
    let before = snapshot(&root);
    let pem = s.www_bundle("t", "www.example.com");
    let paths = [
        "/instances/../../../tmp/evil/haproxy".to_string(),
        "/instances/..%2f..%2ftmp/haproxy".to_string(),
        format!("/instances/{ID}/certificates/../../../../tmp/x.pem"),
        format!("/instances/{ID}/certificates/..%2f..%2fx.pem"),
        format!("/instances/{ID}/certificates/%2e%2e"),
        format!("/instances/{ID}/certificates/.x.pem"),
        format!("/instances/{ID}/../../x/haproxy"),
        format!("/listeners/{ID}/certificates/a%00.pem"),
    ];
    for path in &paths {
        let mut tls = s.api.tls(s.agent.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = format!(
            "PUT {path} HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            pem.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        tls.write_all(&pem).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let head = String::from_utf8_lossy(&out);
        assert!(
            head.starts_with("HTTP/1.1 400") || head.starts_with("HTTP/1.1 403"),
            "{path}: {head}"
        );
    }
    assert_eq!(snapshot(&root), before);
    assert!(!Path::new("/tmp/x.pem").exists() && !Path::new("/tmp/evil").exists());
}

/// Runs `probe` over and over from now until 20 probes after `switched` is set (at most
/// 30 s): how many succeeded, the failures, and the labels the successes returned.
fn stream_across<F, Fut>(
    switched: Arc<AtomicBool>,
    probe: F,
) -> tokio::task::JoinHandle<(usize, Vec<String>, std::collections::BTreeSet<String>)>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send,
{
    tokio::spawn(async move {
        let (mut ok, mut failed, mut labels) = (0, Vec::new(), std::collections::BTreeSet::new());
        let cap = Instant::now() + Duration::from_secs(30);
        let mut after = 0;
        while after < 20 && Instant::now() < cap {
            if switched.load(Ordering::SeqCst) {
                after += 1;
            }
            match probe().await {
                Ok(label) => {
                    ok += 1;
                    labels.insert(label);
                }
                Err(e) => failed.push(e),
            }
        }
        (ok, failed, labels)
    })
}
