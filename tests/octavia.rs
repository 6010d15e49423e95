//! Octavia's own controller code drives the real agent: `tests/octavia_driver.py` runs
//! Octavia's `HaproxyAmphoraLoadBalancerDriver` and `AmphoraAPIClient1_0` (from the
//! `octavia` package on PyPI, installed in a virtualenv cached under `target/`) against
//! the agent over mutual TLS on loopback, and checks the real haproxy at every step;
//! its heartbeats are decoded with Octavia's own `status_message`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Agent, AgentOptions, Pki, free_port};

/// The Octavia release the tests drive (the contract's reference).
const OCTAVIA: &str = "octavia==19.0.0";

static VENV: Mutex<()> = Mutex::new(());

/// Longest a driver run may take (importing Octavia alone takes half a minute on a busy
/// 2-core machine).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);

/// The virtualenv's Python with Octavia installed; made on first use (PyPI), then kept
/// under `target/` between runs.
fn octavia_python() -> PathBuf {
    let _guard = VENV.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/octavia/venv");
    let python = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args([
                "-c",
                "import octavia.amphorae.drivers.haproxy.rest_api_driver, pyroute2",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return python;
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run setup command");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        OCTAVIA,
        "pyroute2",
    ]));
    assert!(
        ready(&python),
        "octavia is not importable after installing it"
    );
    python
}

struct Setup {
    pki: Pki,
    agent: Agent,
    settings: PathBuf,
    http_port: u16,
}

const AMPHORA_ID: &str = "0d3c63b0-4f7c-4b8e-a6a4-0a9a0e4c1d11";

fn setup(extra_toml: &str, extra: serde_json::Value) -> Setup {
    let pki = Pki::new();
    // Octavia's client checks that the agent's certificate names the amphora id.
    let server = pki.issue(
        "agent",
        AMPHORA_ID,
        &["--server", "--san", AMPHORA_ID, "--san", "127.0.0.1"],
    );
    let client = pki.client("controller", "octavia-controller");
    let client_pem = pki.path("controller.pem");
    let mut both = std::fs::read(&client.cert).unwrap();
    both.extend(std::fs::read(&client.key).unwrap());
    std::fs::write(&client_pem, both).unwrap();
    let max_body_bytes = 65536;
    let agent = Agent::start(
        AgentOptions::new(&pki, &server)
            .toml(&format!("[limits]\nmax_body_bytes = {max_body_bytes}\n"))
            .toml(extra_toml),
    );
    let work = pki.path("work");
    std::fs::create_dir_all(work.join("certs")).unwrap();
    let http_port = free_port();
    let mut settings = serde_json::json!({
        "bin": common::bin(),
        "ca": pki.ca_cert(),
        "ca_dir": pki.ca_dir(),
        "client_cert": client_pem,
        "agent_port": agent.addr.port(),
        "amphora_id": AMPHORA_ID,
        "lb_id": "6f6c36b1-0a4b-4b6a-9d42-1f0c5ad1c7e9",
        "http_port": http_port,
        "https_port": free_port(),
        "work": work,
        "cert_storage": work.join("certs"),
        "max_body_bytes": max_body_bytes,
    });
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    let path = pki.path("settings.json");
    std::fs::write(&path, settings.to_string()).unwrap();
    Setup {
        pki,
        agent,
        settings: path,
        http_port,
    }
}

fn drive(setup: &Setup, mode: &str) {
    let python = octavia_python();
    let started = Instant::now();
    // Bounded: a hung driver fails the test instead of holding CI.
    let mut child = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/octavia_driver.py"))
        .arg(mode)
        .arg(&setup.settings)
        .current_dir(setup.pki.path("work"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Octavia driver");
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            text
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DRIVER_TIMEOUT {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "Octavia's driver failed after {:?}:\n{text}\n--- agent log ---\n{}",
        started.elapsed(),
        setup.agent.log_text()
    );
    assert!(
        text.contains(&format!("all {mode} checks passed")),
        "{text}"
    );
    // Octavia's client ran without retrying: no request was refused or repeated.
    assert!(!text.contains("Retrying"), "{text}");
    assert!(
        !setup.agent.log_text().contains("internal error"),
        "{}",
        setup.agent.log_text()
    );
}

#[test]
fn octavia_controller_drives_a_load_balancer_lifecycle() {
    let setup = setup("", serde_json::json!({}));
    drive(&setup, "lifecycle");
    // The load balancer is gone from the instance store and its haproxy has stopped.
    let lb = "6f6c36b1-0a4b-4b6a-9d42-1f0c5ad1c7e9";
    assert!(!setup.agent.state_dir().join("instances").join(lb).exists());
    assert!(common::http_get(setup.http_port).is_err());
}

#[test]
fn heartbeats_decode_with_octavias_own_code() {
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let key = "heartbeat-key-of-this-test";
    let setup = setup(
        &format!(
            "[octavia]\namphora_id = \"{AMPHORA_ID}\"\nheartbeat_key = \"{key}\"\nheartbeat_interval = \"1s\"\ncontroller_ip_port_list = [\"127.0.0.1:{port}\"]\n"
        ),
        serde_json::json!({"heartbeat_port": port, "heartbeat_key": key}),
    );
    drive(&setup, "heartbeat");
}

const LB: &str = "6f6c36b1-0a4b-4b6a-9d42-1f0c5ad1c7e9";
const LISTENER: &str = "1f0c5ad1-0000-4b6a-9d42-6f6c36b10a4b";

/// A configuration in the shape Octavia's templater renders, with Octavia's paths.
fn octavia_config(binds: &[u16], body: &str, extra: &str) -> String {
    let binds: String = binds
        .iter()
        .map(|p| format!("    bind 127.0.0.1:{p}\n"))
        .collect();
    format!(
        "# Configuration for loadbalancer {LB}\nglobal\n    daemon\n    user nobody\n    log /run/rsyslog/octavia/log local0\n    stats socket /var/lib/octavia/{LB}.sock mode 0666 level user\n    server-state-file /var/lib/octavia/{LB}/servers-state\n    maxconn 50000\n\ndefaults\n    log global\n    retries 3\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\nfrontend {LISTENER}\n    maxconn 50000\n{binds}    mode http\n    http-request return status 200 content-type text/plain string \"{body}\"\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_1_0_answers_as_octavias_agent_does() {
    let pki = Pki::new();
    let server = pki.issue(
        "agent",
        AMPHORA_ID,
        &["--server", "--san", AMPHORA_ID, "--san", "127.0.0.1"],
    );
    let creds = pki.client("controller", "octavia-controller");
    let octavia_port = free_port();
    let agent = Agent::start(
        AgentOptions::new(&pki, &server)
            .toml("[limits]\nmax_body_bytes = 65536\n")
            .toml(&format!(
                "[octavia]\nlisten = [\"127.0.0.1:{octavia_port}\"]\n"
            )),
    );
    let client = common::Client::new(&pki.ca_cert(), Some(&creds));
    let a = agent.addr;
    let req = |method: &'static str, path: String, body: Vec<u8>| {
        let client = client.clone();
        async move { client.request(a, method, &path, &body).await.unwrap() }
    };
    let json_of = |r: &common::Resp| {
        assert_eq!(
            r.headers["content-type"], "application/json",
            "{} {}",
            r.status, r.body
        );
        r.json()
    };

    // Version discovery: the native root and Octavia's agree on api_version.
    let native = req("GET", "/".into(), vec![]).await;
    let octavia = req("GET", "//".into(), vec![]).await;
    assert_eq!(native.json()["api_version"], "1.0");
    assert_eq!(json_of(&octavia), serde_json::json!({"api_version": "1.0"}));

    // The extra listener Octavia calls (its port 9443) serves the same API.
    let extra: std::net::SocketAddr = format!("127.0.0.1:{octavia_port}").parse().unwrap();
    let r = client.get(extra, "//").await.unwrap();
    assert_eq!(json_of(&r)["api_version"], "1.0");

    // Octavia's agent configuration: the heartbeat goes where it says, signed with its key.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ini = format!(
        "[DEFAULT]\ndebug = False\n[amphora_agent]\namphora_id = amp-from-config\n[health_manager]\ncontroller_ip_port_list = {}\nheartbeat_interval = 1\nheartbeat_key = pushed-key\n",
        udp.local_addr().unwrap()
    );
    let r = req("PUT", "/1.0/config".into(), ini.clone().into_bytes()).await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (202, Some("OK"))
    );
    assert_eq!(
        std::fs::read_to_string(agent.state_dir().join("octavia-agent.conf")).unwrap(),
        ini
    );
    let mut buf = vec![0u8; 65536];
    let n = udp
        .recv(&mut buf)
        .expect("a heartbeat after PUT /1.0/config");
    let (payload, tag) = buf[..n].split_at(n - 64);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"pushed-key");
    let expected = aws_lc_rs::hmac::sign(&key, payload);
    assert_eq!(tag, applianced::certs::hex(expected.as_ref()).as_bytes());
    let mut message = String::new();
    std::io::Read::read_to_string(&mut flate2::read::ZlibDecoder::new(payload), &mut message)
        .unwrap();
    let message: serde_json::Value = serde_json::from_str(&message).unwrap();
    assert_eq!(
        (message["id"].as_str(), message["ver"].as_u64()),
        (Some("amp-from-config"), Some(3))
    );
    let r = req(
        "PUT",
        "/1.0/config".into(),
        b"[health_manager]\ncontroller_ip_port_list = nowhere\n".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Unknown routes and methods: Octavia's shape under /1.0, the native 403 elsewhere.
    assert_eq!(req("GET", "/nope".into(), vec![]).await.status, 403);
    let r = req("GET", "/1.0/nope".into(), vec![]).await;
    assert_eq!(r.status, 404);
    assert_eq!(json_of(&r)["http_code"], 404);
    let r = req("POST", "/1.0/info".into(), vec![]).await;
    assert_eq!(r.status, 405);
    assert_eq!(json_of(&r)["http_code"], 405);
    let r = req("GET", format!("/1.0/loadbalancer/{LB}/haproxy"), vec![]).await;
    assert_eq!(r.status, 404);
    assert_eq!(json_of(&r)["message"], "Loadbalancer Not Found");
    let r = req("PUT", format!("/1.0/loadbalancer/{LB}/reload"), vec![]).await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (404, Some("Loadbalancer Not Found"))
    );

    // Upload: translated into the instance, checked, served by the real haproxy.
    let port = free_port();
    let put_config = |config: String| {
        req(
            "PUT",
            format!("/1.0/loadbalancer/{AMPHORA_ID}/{LB}/haproxy"),
            config.into_bytes(),
        )
    };
    let r = put_config(octavia_config(&[port], "v1", "")).await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (202, Some("OK")),
        "{}",
        agent.log_text()
    );
    assert!(common::http_get(port).unwrap().contains("v1"));
    let stored = req("GET", format!("/1.0/loadbalancer/{LB}/haproxy"), vec![]).await;
    assert_eq!(stored.status, 200);
    assert!(
        !stored.body.contains("/var/lib/octavia") && !stored.body.contains("user nobody"),
        "{}",
        stored.body
    );
    assert!(
        stored.body.contains(&format!(
            "{}/{LB}/octavia-stats.sock",
            agent.run_dir().display()
        )),
        "{}",
        stored.body
    );
    assert!(agent.run_dir().join(LB).join("octavia-stats.sock").exists());

    // A configuration haproxy -c accepts but that cannot bind: rolled back, v1 serves.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let r = put_config(octavia_config(&[port, taken_port], "v2", "")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(json_of(&r)["message"], "Error reloading haproxy");
    assert!(common::http_get(port).unwrap().contains("v1"));
    let stored = req("GET", format!("/1.0/loadbalancer/{LB}/haproxy"), vec![]).await;
    assert!(
        !stored.body.contains(&taken_port.to_string()),
        "{}",
        stored.body
    );
    drop(taken);
    // The servers' state was saved through the stats socket before the reload.
    let state = std::fs::read_to_string(agent.run_dir().join(LB).join("servers-state")).unwrap();
    assert!(state.starts_with("1\n# be_id"), "{state}");

    // Refused before haproxy sees it: the checker's output, programs, foreign files.
    let r = put_config(octavia_config(&[port], "v3", "    nonsense-directive\n")).await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (400, Some("Invalid request"))
    );
    assert!(
        r.json()["details"]
            .as_str()
            .unwrap()
            .contains("nonsense-directive"),
        "{}",
        r.body
    );
    let r = put_config(octavia_config(
        &[port],
        "v3",
        "backend b\n    option external-check\n",
    ))
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["details"].as_str().unwrap().contains("PING"),
        "{}",
        r.body
    );
    let other_lb = "6f6c36b1-0a4b-4b6a-9d42-000000000000";
    let r = put_config(octavia_config(
        &[port],
        "v3",
        &format!("    errorfile 503 /var/lib/octavia/certs/{other_lb}/x.pem\n"),
    ))
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(common::http_get(port).unwrap().contains("v1"));

    // Certificate-directory files: names, PEM checks, crt-lists, md5 of what is stored.
    let cert_path = |name: &str| format!("/1.0/loadbalancer/{LB}/certificates/{name}");
    let r = req("PUT", cert_path("x.crt"), b"x".to_vec()).await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (400, Some("Filename has wrong format"))
    );
    let leaf = pki.issue("leaf", "www.example.com", &["--server"]);
    let other = pki.issue("other", "other.example.com", &["--server"]);
    let mut mismatched = std::fs::read(&leaf.cert).unwrap();
    mismatched.extend(std::fs::read(&other.key).unwrap());
    let r = req("PUT", cert_path("aa.pem"), mismatched).await;
    assert_eq!(r.status, 400);
    assert!(
        json_of(&r)["details"]
            .as_str()
            .unwrap()
            .contains("cert_key_mismatch"),
        "{}",
        r.body
    );
    let r = req("GET", cert_path("aa.pem"), vec![]).await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (404, Some("Certificate Not Found"))
    );
    let bundle = leaf.bundle();
    let r = req("PUT", cert_path("aa.pem"), bundle.clone()).await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (200, Some("OK"))
    );
    let r = req("GET", cert_path("aa.pem"), vec![]).await;
    let md5 = json_of(&r)["md5sum"].as_str().unwrap().to_string();
    let stored = std::fs::read(
        agent
            .state_dir()
            .join(format!("instances/{LB}/certificates/aa.pem")),
    )
    .unwrap();
    assert_eq!(stored, bundle);
    let expected = Command::new("md5sum")
        .arg(
            agent
                .state_dir()
                .join(format!("instances/{LB}/certificates/aa.pem")),
        )
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&expected.stdout).starts_with(&md5));
    let r = req(
        "PUT",
        cert_path("list.pem"),
        b"/etc/ssl/private/key.pem\n".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = req(
        "PUT",
        cert_path("list.pem"),
        format!("/var/lib/octavia/certs/{LB}/aa.pem [alpn h2]\n").into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = std::fs::read_to_string(
        agent
            .state_dir()
            .join(format!("instances/{LB}/certificates/list.pem")),
    )
    .unwrap();
    assert_eq!(
        listed,
        format!(
            "{}/instances/{LB}/certificates/aa.pem [alpn h2]\n",
            agent.state_dir().display()
        )
    );
    let r = req("DELETE", cert_path("aa.pem"), vec![]).await;
    assert_eq!(r.status, 200);
    let r = req("DELETE", cert_path("aa.pem"), vec![]).await;
    assert_eq!(
        r.status, 200,
        "deleting a missing file is fine, as in Octavia"
    );

    // Octavia's client reads 413 as success: an oversized body is a 400.
    let r = req("PUT", cert_path("big.pem"), vec![b'x'; 65537]).await;
    assert_eq!(r.status, 400);
    assert!(json_of(&r)["details"].as_str().unwrap().contains("larger"));

    // Actions: stop keeps the files, reload starts a stopped haproxy.
    let r = req("PUT", format!("/1.0/loadbalancer/{LB}/bogus"), vec![]).await;
    assert_eq!(
        (r.status, json_of(&r)["details"].as_str()),
        (400, Some("Unknown action: bogus"))
    );
    let r = req("PUT", format!("/1.0/loadbalancer/{LB}/stop"), vec![]).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(common::http_get(port).is_err());
    let r = req("PUT", format!("/1.0/loadbalancer/{LB}/reload"), vec![]).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(common::http_get(port).unwrap().contains("v1"));

    // What Octavia reads about the amphora.
    let details = json_of(&req("GET", "/1.0/details".into(), vec![]).await);
    assert_eq!(details["listeners"], serde_json::json!([LISTENER]));
    assert_eq!(details["haproxy_count"], 1);
    let listeners = json_of(&req("GET", "/1.0/listeners".into(), vec![]).await);
    assert_eq!(
        listeners,
        serde_json::json!([{"status": "ACTIVE", "uuid": LISTENER, "type": "HTTP"}])
    );

    // The agent's certificate: refused material is a 400, and the old one stays.
    let r = req(
        "PUT",
        "/1.0/certificate".into(),
        b"not a certificate".to_vec(),
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (400, Some("Invalid request"))
    );
    assert_eq!(client.get(a, "//").await.unwrap().status, 200);

    // Routes that only make sense inside an amphora VM.
    for (method, path, status) in [
        ("POST", "/1.0/plug/vip/10.0.0.5", 500),
        ("POST", "/1.0/plug/network", 500),
        ("GET", "/1.0/interface/10.0.0.5", 404),
        ("PUT", "/1.0/interface/10.0.0.5/rules", 404),
        ("PUT", "/1.0/vrrp/upload", 500),
        ("PUT", "/1.0/vrrp/start", 500),
        ("PUT", "/1.0/listeners/amp/l/udp_listener", 500),
    ] {
        let r = req(method, path.into(), vec![]).await;
        assert_eq!(r.status, status, "{method} {path}");
        assert!(
            json_of(&r)["details"]
                .as_str()
                .unwrap()
                .contains("amphora VM")
        );
    }

    // Delete: stopped and gone; again, still OK.
    let r = req("DELETE", format!("/1.0/listeners/{LB}"), vec![]).await;
    assert_eq!(
        (r.status, json_of(&r)["message"].as_str()),
        (200, Some("OK"))
    );
    assert!(common::http_get(port).is_err());
    assert!(!agent.state_dir().join("instances").join(LB).exists());
    let r = req("DELETE", format!("/1.0/listeners/{LB}"), vec![]).await;
    assert_eq!(r.status, 200);
}
