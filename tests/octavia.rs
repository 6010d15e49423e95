//! Octavia's own controller code drives the real agent: `tests/octavia_driver.py` runs
//! Octavia's `HaproxyAmphoraLoadBalancerDriver` and `AmphoraAPIClient1_0` (from the
//! `octavia` package on PyPI, installed in a virtualenv cached under `target/`) against
//! the agent over mutual TLS on loopback, and checks the real haproxy at every step;
//! its heartbeats are decoded with Octavia's own `status_message`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use common::{Agent, AgentOptions, Pki, free_port};

/// The Octavia release the tests drive (the contract's reference).
const OCTAVIA: &str = "octavia==19.0.0";

static VENV: Mutex<()> = Mutex::new(());

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
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/octavia_driver.py"))
        .arg(mode)
        .arg(&setup.settings)
        .current_dir(setup.pki.path("work"))
        .output()
        .expect("run the Octavia driver");
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
