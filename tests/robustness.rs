//! The robustness suite: the attacks of issue 15 run against the real binary, with real
//! TLS on loopback and real haproxy. Each test is bounded in time.
//!
//! - oversized bodies over HTTP/2 and HTTP/1.1 (declared and chunked) answered 413, as
//!   curl and a Python HTTP/2 client (httpx, h2) see it
//! - idle and slow clients, HTTP/1.1 and HTTP/2, closed at their timeouts while a normal
//!   client is served

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// The Python interpreter of a virtual environment holding httpx[http2] (made once per
/// target directory; every test binary that needs it shares it under a lock).
fn python_h2() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("robustness-venv");
        std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
        let lock = std::fs::File::create(venv.with_extension("lock")).unwrap();
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let python = venv.join("bin/python");
        let ready = |py: &Path| {
            Command::new(py)
                .args(["-c", "import httpx, h2"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ready(&python) {
            let made = Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv)
                .status()
                .expect("python3 (scripts/install-deps installs python3-venv)");
            assert!(made.success(), "python3 -m venv failed");
            let pip = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "httpx[http2]==0.28.1"])
                .status()
                .unwrap();
            assert!(pip.success(), "pip install httpx[http2] failed");
            assert!(ready(&python));
        }
        python
    })
}

fn h2probe(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/robustness/h2probe.py");
    let out = Command::new(python_h2())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "h2probe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Setup {
    pki: Pki,
    server: Creds,
    client: Creds,
}

fn setup() -> Setup {
    let pki = Pki::new();
    let server = pki.server("server", "agent-1");
    let client = pki.client("client", "controller-1");
    Setup {
        pki,
        server,
        client,
    }
}

impl Setup {
    /// curl with the client certificate; returns (exit code, HTTP status, stderr).
    fn curl(&self, url: &str, args: &[&str], stdin: Option<&Path>) -> (i32, String, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--max-time")
        .arg("30")
        .arg("--cacert")
        .arg(self.pki.ca_cert())
        .arg("--cert")
        .arg(&self.client.cert)
        .arg("--key")
        .arg(&self.client.key)
        .args(args)
        .arg(url);
        if let Some(file) = stdin {
            cmd.stdin(std::fs::File::open(file).unwrap());
        }
        let out = cmd.output().expect("curl is installed");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn oversized_bodies_are_answered_413_over_http2_and_http11() {
    let s = setup();
    let agent =
        Agent::start(AgentOptions::new(&s.pki, &s.server).toml("[limits]\nmax_body_bytes = 2048"));
    let url = format!("https://{}/certificate", agent.addr);
    let dir = tempfile::tempdir().unwrap();
    for size in [100_000usize, 3_000_000] {
        let file = dir.path().join(format!("body-{size}"));
        std::fs::write(&file, vec![b'x'; size]).unwrap();
        let data = format!("@{}", file.display());
        let cases: [(&str, Vec<&str>, Option<&Path>); 4] = [
            // Declared length, HTTP/2 (curl's choice when ALPN offers h2).
            (
                "2 413",
                vec!["--http2", "-X", "PUT", "--data-binary", &data],
                None,
            ),
            // No declared length over HTTP/2: the limit is found while reading.
            (
                "2 413",
                vec!["--http2", "-X", "PUT", "-T", "-"],
                Some(&file),
            ),
            // HTTP/1.1, declared and chunked.
            (
                "1.1 413",
                vec!["--http1.1", "-X", "PUT", "--data-binary", &data],
                None,
            ),
            (
                "1.1 413",
                vec!["--http1.1", "-X", "PUT", "-T", "-"],
                Some(&file),
            ),
        ];
        for (expected, args, stdin) in cases {
            // Each case three times: the race between the answer and the rest of the
            // upload is what used to lose the answer.
            for _ in 0..3 {
                let (code, status, stderr) = s.curl(&url, &args, stdin);
                assert_eq!(
                    (code, status.as_str()),
                    (0, expected),
                    "{size} bytes, curl {args:?}: {stderr}"
                );
            }
        }
        // A Python HTTP/2 client (httpx over h2) sees the 413 too, and does not hang.
        let started = Instant::now();
        let answer = h2probe(&[
            "put",
            &url,
            &size.to_string(),
            s.pki.ca_cert().to_str().unwrap(),
            s.client.cert.to_str().unwrap(),
            s.client.key.to_str().unwrap(),
        ]);
        assert_eq!(answer, "HTTP/2 413", "{size} bytes");
        assert!(started.elapsed() < Duration::from_secs(15));
    }
    // The agent serves normally afterwards.
    let (code, status, _) = s.curl(&format!("https://{}/status", agent.addr), &[], None);
    assert_eq!((code, status.as_str()), (0, "2 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_closed_at_their_timeouts_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let agent =
        Agent::start(AgentOptions::new(&s.pki, &s.server).toml(
            "[limits]\nidle_timeout = \"2s\"\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"",
        ));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));

    // An idle HTTP/2 connection answers the server's keep-alive PINGs; it is closed
    // (GOAWAY) at the idle timeout all the same.
    let (host, port) = (agent.addr.ip().to_string(), agent.addr.port().to_string());
    let ca = s.pki.ca_cert();
    let (cert, key) = (s.client.cert.clone(), s.client.key.clone());
    let idle_h2 = tokio::task::spawn_blocking(move || {
        h2probe(&[
            "idle",
            &host,
            &port,
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
        ])
    });

    // An idle HTTP/1.1 keep-alive connection, a client trickling its headers and one
    // trickling its body.
    let mut idle_h1 = client.connect(agent.addr).await.unwrap();
    assert_eq!(idle_h1.get("/status").await.unwrap().status, 200);
    let mut slow_headers = client.tls(agent.addr).await.unwrap();
    slow_headers
        .write_all(b"GET /status HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    let mut slow_body = client.tls(agent.addr).await.unwrap();
    slow_body
        .write_all(b"PUT /certificate HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123")
        .await
        .unwrap();
    let started = Instant::now();

    // Meanwhile a normal client is served at once, again and again.
    while started.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        assert_eq!(client.get(agent.addr, "/status").await.unwrap().status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(8), slow_headers.read_to_end(&mut buf))
        .await
        .expect("a client trickling its headers is closed")
        .ok();
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(8), slow_body.read(&mut buf))
        .await
        .expect("a client trickling its body is answered")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    assert!(
        idle_h1.get("/status").await.is_err(),
        "idle HTTP/1.1 connection still open"
    );

    let answer = idle_h2.await.unwrap();
    let (idle_for, pings) = answer.split_once(' ').unwrap();
    let idle_for: f64 = idle_for
        .parse()
        .unwrap_or_else(|_| panic!("idle HTTP/2 connection never closed: {answer}"));
    let pings: u32 = pings.parse().unwrap();
    assert!(
        (1.5..8.0).contains(&idle_for),
        "idle HTTP/2 closed after {idle_for} s"
    );
    assert!(pings >= 1, "no keep-alive PING was sent: {answer}");
    assert_eq!(client.get(agent.addr, "/status").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_counted_and_warned_about_once_in_a_while() {
    let s = setup();
    let agent =
        Agent::start(AgentOptions::new(&s.pki, &s.server).toml("[limits]\nmax_connections = 2"));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let mut a = client.connect(agent.addr).await.unwrap();
    let b = client.connect(agent.addr).await.unwrap();
    assert_eq!(a.get("/status").await.unwrap().status, 200);
    for _ in 0..40 {
        assert!(client.get(agent.addr, "/status").await.is_err());
    }
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        match client.get(agent.addr, "/metrics").await {
            Ok(r) => break r.body,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    };
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("applianced_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(refused >= 40, "{refused} refusals counted");
    let warned = agent
        .log_text()
        .matches("connection refused: limits.max_connections reached")
        .count();
    assert_eq!(warned, 1, "{}", agent.log_text());
}
