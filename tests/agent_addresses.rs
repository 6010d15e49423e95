//! Address management, black-box: the real agent and haproxy inside a network namespace
//! the test creates (root), with `lo` of that namespace as `instances.vip_interface`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

/// A network namespace, deleted (with what still runs in it) on drop.
struct Netns {
    name: String,
    run_dir: std::path::PathBuf,
}

impl Netns {
    fn new(run_dir: &Path) -> Netns {
        let name = format!("appl-test-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success(),
            "ip netns add (root needed)"
        );
        let ns = Netns {
            name,
            run_dir: run_dir.to_path_buf(),
        };
        assert!(ns.cmd("ip", &["link", "set", "lo", "up"]).status.success());
        ns
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn cmd(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap()
    }

    fn lo_addresses(&self) -> String {
        String::from_utf8_lossy(&self.cmd("ip", &["-o", "addr", "show", "dev", "lo"]).stdout)
            .into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Daemons left by a failed test: stop them by their pid files.
        for pid_file in ["haproxy.pid", "stunnel.pid"] {
            for id in [A, B] {
                if let Ok(pid) = std::fs::read_to_string(self.run_dir.join(id).join(pid_file)) {
                    let _ = Command::new("kill").arg(pid.trim()).output();
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn haproxy(port_a: u16, extra_bind: &str, text: &str) -> String {
    format!(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\nfrontend fe\n    bind 192.0.2.10:{port_a}{extra_bind}\n    http-request return status 200 content-type text/plain string \"{text}\"\n"
    )
}

#[test]
fn bind_addresses_are_added_and_released_with_the_instances_that_use_them() {
    let pki = Pki::new();
    let server = pki.server("server", "agent-ns");
    let client = pki.client("client", "controller-1");
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let ns = Netns::new(&run_dir);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n[server]\nlisten = [\"127.0.0.1:9443\"]\ncert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{ca}\"\n[instances]\nvip_interface = \"lo\"\n",
            d = dir.path().display(),
            c = server.cert.display(),
            k = server.key.display(),
            ca = pki.ca_cert().display()
        ),
    )
    .unwrap();
    let mut agent: Child = ns
        .command(bin())
        .args(["agent", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let api = |method: &str, path: &str, body: &str| -> (String, String) {
        let body_file = dir.path().join("body");
        std::fs::write(&body_file, body).unwrap();
        let out = ns
            .command("curl")
            .args([
                "-sS",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "-X",
                method,
                "--cacert",
            ])
            .arg(pki.ca_cert())
            .arg("--cert")
            .arg(&client.cert)
            .arg("--key")
            .arg(&client.key)
            .args(if body.is_empty() {
                vec![]
            } else {
                vec![
                    "--data-binary".to_string(),
                    format!("@{}", body_file.display()),
                ]
            })
            .arg(format!("https://127.0.0.1:9443{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while api("GET", "/status", "").0 != "200" {
        assert!(
            Instant::now() < deadline,
            "agent did not start: {}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!ns.lo_addresses().contains("192.0.2.10/32"));

    // Instance A binds 192.0.2.10: the address is added, then haproxy serves on it.
    let (code, body) = api(
        "PUT",
        &format!("/instances/{A}/haproxy"),
        &haproxy(8080, "", "from A"),
    );
    assert_eq!(code, "201", "{body}");
    assert!(body.contains("address 192.0.2.10 added to lo"), "{body}");
    assert!(ns.lo_addresses().contains("192.0.2.10/32"));
    let served = ns.cmd("curl", &["-sS", "http://192.0.2.10:8080/"]);
    assert_eq!(String::from_utf8_lossy(&served.stdout), "from A");

    // Instance B binds the same address on another port, and 192.0.2.11.
    let (code, body) = api(
        "PUT",
        &format!("/instances/{B}/haproxy"),
        &haproxy(8081, "\n    bind 192.0.2.11:8080", "from B"),
    );
    assert_eq!(code, "201", "{body}");
    assert!(
        body.contains("192.0.2.11 added") && !body.contains("192.0.2.10 added"),
        "{body}"
    );

    // Deleting A keeps the address B still binds.
    let (code, body) = api("DELETE", &format!("/instances/{A}"), "");
    assert_eq!(code, "200", "{body}");
    let lo = ns.lo_addresses();
    assert!(
        lo.contains("192.0.2.10/32") && lo.contains("192.0.2.11/32"),
        "{lo}"
    );
    assert_eq!(
        String::from_utf8_lossy(&ns.cmd("curl", &["-sS", "http://192.0.2.10:8081/"]).stdout),
        "from B"
    );

    // B no longer binds 192.0.2.11: removed; then B goes, and so does 192.0.2.10.
    let (code, body) = api(
        "PUT",
        &format!("/instances/{B}/haproxy"),
        &haproxy(8081, "", "from B"),
    );
    assert_eq!(code, "201", "{body}");
    assert!(
        body.contains("address 192.0.2.11 removed from lo"),
        "{body}"
    );
    let (code, body) = api("DELETE", &format!("/instances/{B}/haproxy"), "");
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains("address 192.0.2.10 removed from lo"),
        "{body}"
    );
    let lo = ns.lo_addresses();
    assert!(
        !lo.contains("192.0.2.10") && !lo.contains("192.0.2.11"),
        "{lo}"
    );

    let _ = agent.kill();
    let _ = agent.wait();
}
