//! The robustness suite: the attacks of issue 15 run against the real binary, with real
//! TLS on loopback and real haproxy. Each test is bounded in time.
//!
//! - oversized bodies over HTTP/2 and HTTP/1.1 (declared and chunked) answered 413, as
//!   curl and a Python HTTP/2 client (httpx, h2) see it
//! - idle and slow clients, HTTP/1.1 and HTTP/2, closed at their timeouts while a normal
//!   client is served
//! - kill -9 at random moments of instance uploads and of agent certificate rotations
//!   (`ROBUSTNESS_TRIALS` each, 100 by default; `bench/robustness` runs more): every
//!   file is old or new, the agent restarts, adopts its haproxy and serves the files on
//!   disk
//! - descriptor exhaustion under a low `RLIMIT_NOFILE`, a full disk (a small tmpfs),
//!   over-long names, undeliverable certificate chains

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

/// Trials per kill -9 test (`ROBUSTNESS_TRIALS`, 100 by default).
fn trials() -> u32 {
    std::env::var("ROBUSTNESS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// A small pseudo-random generator (xorshift), seeded from the clock; the seed is
/// printed so a failing run can be repeated with `ROBUSTNESS_SEED`.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("ROBUSTNESS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{test}: ROBUSTNESS_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const ID: &str = "7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7c";

/// An haproxy configuration whose frontend answers `version` (small enough for a low
/// descriptor limit).
fn versioned_haproxy(port: u16, version: u32) -> String {
    format!(
        "global\n    maxconn 32\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\nfrontend fe\n    bind {{MYIP}}:{port}\n    http-request return status 200 content-type text/plain string \"v{version}\"\n"
    )
}

/// Temporary files and staged files left in `dir` (recursively).
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            found.extend(leftovers(&entry.path()));
        } else if (name.contains(".tmp.") && !writer_alive(&name))
            || name.ends_with(".pair")
            || name.ends_with(".next")
        {
            found.push(entry.path());
        }
    }
    found
}

/// Whether the process that names a temporary file (`.NAME.tmp.PID.N`) still runs: its
/// write is in progress (the restarted agent bringing a daemon in line), not left over.
fn writer_alive(name: &str) -> bool {
    name.rsplit('.')
        .nth(1)
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Polls `check` every 50 ms for up to `secs` seconds.
async fn eventually(secs: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_instance_uploads_leaves_old_or_new_files_served_after_restart() {
    let s = setup();
    let mut agent = Agent::start(AgentOptions::new(&s.pki, &s.server));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let port = free_port();
    let cfg_path = agent
        .state_dir()
        .join(format!("instances/{ID}/haproxy.cfg"));
    let addr = agent.addr;
    let put = |version: u32| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(
                    addr,
                    "PUT",
                    &format!("/instances/{ID}/haproxy"),
                    versioned_haproxy(port, version).as_bytes(),
                )
                .await
                .map(|r| r.status)
                .ok()
        })
    };
    assert_eq!(put(0).await.unwrap(), Some(201));
    let mut rng = Rng::new("uploads");
    let mut acknowledged_then_lost = 0;
    let (mut old_kept, mut new_kept) = (0, 0);
    for trial in 1..=trials() {
        let before = std::fs::read_to_string(&cfg_path).unwrap();
        let next = versioned_haproxy(port, trial);
        let upload = put(trial);
        // Anywhere from before the request arrives to after it is answered (a check and
        // a reload take some 100 to 300 ms here).
        tokio::time::sleep(Duration::from_micros(rng.below(400_000))).await;
        agent.kill9();
        let answered = upload.await.unwrap();
        let on_disk = std::fs::read_to_string(&cfg_path).unwrap();
        assert!(
            on_disk == before || on_disk == next,
            "trial {trial}: torn haproxy.cfg: {on_disk:?}"
        );
        if answered == Some(201) && on_disk != next {
            acknowledged_then_lost += 1;
        }
        if on_disk == next {
            new_kept += 1;
        } else {
            old_kept += 1;
        }
        agent.start_again();
        // Left by the killed agent (the new one may be writing its own meanwhile, as it
        // brings haproxy in line).
        let own = format!(".tmp.{}.", agent.child.id());
        let left: Vec<_> = [agent.state_dir(), agent.run_dir()]
            .iter()
            .flat_map(|d| leftovers(d))
            .filter(|p| !p.to_string_lossy().contains(&own))
            .collect();
        assert!(left.is_empty(), "trial {trial}: leftovers {left:?}");
        let version = on_disk
            .split("string \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        let served = eventually(15, async || {
            http_get(port).is_ok_and(|r| r.ends_with(&version))
        })
        .await;
        assert!(
            served,
            "trial {trial}: haproxy does not serve {version} (the file on disk): {:?}\n{}",
            http_get(port),
            agent.log_text()
        );
        assert_eq!(client.get(agent.addr, "/status").await.unwrap().status, 200);
    }
    eprintln!("uploads: old kept {old_kept}, new kept {new_kept}");
    assert_eq!(acknowledged_then_lost, 0, "acknowledged uploads were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_certificate_rotation_always_restarts_with_a_matching_pair() {
    let s = setup();
    let pairs = [
        s.pki.server("rot-a", "agent-1"),
        s.pki.server("rot-b", "agent-1"),
    ];
    let live = Creds {
        cert: s.pki.path("live.crt"),
        key: s.pki.path("live.key"),
    };
    std::fs::copy(&s.server.cert, &live.cert).unwrap();
    std::fs::copy(&s.server.key, &live.key).unwrap();
    let mut agent = Agent::start(AgentOptions::new(&s.pki, &live));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let leaf = |path: &Path| applianced::certs::load_certs(path).unwrap()[0].clone();
    let mut rng = Rng::new("rotation");
    let mut rotated = 0;
    for trial in 1..=trials() {
        let before = leaf(&live.cert);
        let next = &pairs[trial as usize % 2];
        let bundle = next.bundle();
        let upload = {
            let client = client.clone();
            let addr = agent.addr;
            tokio::spawn(async move {
                client
                    .request(addr, "PUT", "/certificate", &bundle)
                    .await
                    .map(|r| r.status)
                    .ok()
            })
        };
        tokio::time::sleep(Duration::from_micros(rng.below(40_000))).await;
        agent.kill9();
        let answered = upload.await.unwrap();
        // It always comes back (start_again panics with the log if it exits).
        agent.start_again();
        let cert = applianced::certs::load_certs(&live.cert).unwrap();
        let key = applianced::certs::load_key(&live.key).unwrap();
        assert!(
            applianced::certs::certified_key(cert.clone(), key).is_ok(),
            "trial {trial}: key and certificate do not match"
        );
        let now = cert[0].clone();
        assert!(
            now == before || now == leaf(&next.cert),
            "trial {trial}: a third certificate"
        );
        if answered == Some(201) {
            assert_eq!(
                now,
                leaf(&next.cert),
                "trial {trial}: acknowledged, then lost"
            );
        }
        if now != before {
            rotated += 1;
        }
        assert!(
            leftovers(live.cert.parent().unwrap()).is_empty(),
            "trial {trial}: {:?}",
            leftovers(live.cert.parent().unwrap())
        );
        // It serves with the certificate on disk.
        let tls = client.tls(agent.addr).await.unwrap();
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(presented, now, "trial {trial}: serves another certificate");
    }
    eprintln!("rotation: rotated in {rotated} of {} trials", trials());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_chains_and_overlong_names_are_refused_cleanly() {
    let s = setup();
    let live = Creds {
        cert: s.pki.path("live.crt"),
        key: s.pki.path("live.key"),
    };
    std::fs::copy(&s.server.cert, &live.cert).unwrap();
    std::fs::copy(&s.server.key, &live.key).unwrap();
    let agent = Agent::start(AgentOptions::new(&s.pki, &live));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let mut conn = client.connect(agent.addr).await.unwrap();
    let new = s.pki.server("next", "agent-1");
    let ca = std::fs::read(s.pki.ca_cert()).unwrap();
    // The CA repeated: not a path, and soon more than TLS clients accept.
    for copies in [2usize, 200] {
        let mut bundle = new.bundle();
        for _ in 0..copies {
            bundle.extend_from_slice(&ca);
        }
        let r = conn
            .request(
                "PUT",
                "/certificate",
                &bundle,
                &[("accept", "application/json")],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 409, "{copies} copies: {}", r.body);
        assert_eq!(r.json()["code"], "bad_chain", "{}", r.body);
    }
    // Leaf then CA once (what `pki issue` writes) is fine, and the agent serves with it.
    let bundle = new.bundle();
    let r = conn
        .request("PUT", "/certificate", &bundle, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(client.get(agent.addr, "/status").await.unwrap().status, 200);

    // A certificate file name of 255 characters, the most a file name may have (its
    // stem a legal DNS name): its temporary file stays within NAME_MAX, so it is stored,
    // not a 500.
    let long_name = format!(
        "{}.{}.{}.{}.example",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(51)
    );
    assert_eq!(long_name.len() + 4, 255);
    let bundle = s
        .pki
        .issue("long", &long_name, &["--server", "--san", &long_name])
        .bundle();
    let path = format!("/instances/{ID}/certificates/{long_name}.pem");
    let r = conn.request("PUT", &path, &bundle, &[]).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(conn.get(&path).await.unwrap().status, 200);
}

/// A tmpfs mounted for one test, unmounted (after `agent` is gone) on drop.
struct SmallDisk {
    agent: Option<Agent>,
    mount: tempfile::TempDir,
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        drop(self.agent.take());
        // Its haproxy runs from files on the mount.
        kill_processes_with(&self.mount.path().display().to_string());
        for _ in 0..50 {
            let done = Command::new("umount")
                .arg(self.mount.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_changes_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "mounting a tmpfs needs root (CI runs the tests as root)"
    );
    let s = setup();
    let mount = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs"])
        .arg(mount.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed");
    let root = mount.path().display().to_string();
    let mut disk = SmallDisk { agent: None, mount };
    let agent = Agent::start(
        AgentOptions::new(&s.pki, &s.server)
            .arg("--state-dir")
            .arg(format!("{root}/state"))
            .arg("--run-dir")
            .arg(format!("{root}/run")),
    );
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let port = free_port();
    let r = client
        .request(
            agent.addr,
            "PUT",
            &format!("/instances/{ID}/haproxy"),
            versioned_haproxy(port, 1).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    // A file that exists before the disk fills: a failed overwrite must leave it as it
    // is, with nothing to restore.
    let r = client
        .request(
            agent.addr,
            "PUT",
            &format!("/instances/{ID}/custom503"),
            b"HTTP/1.0 503 Service Unavailable\r\n\r\nv1 down",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let cfg = Path::new(&root).join(format!("state/instances/{ID}/haproxy.cfg"));
    let before = std::fs::read(&cfg).unwrap();
    let custom503 = cfg.with_file_name("custom503.http");
    let before_503 = std::fs::read(&custom503).unwrap();

    // Fill the disk.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(Path::new(&root).join("filler")).unwrap();
        while filler.write_all(&[0u8; 4096]).is_ok() {}
    }
    let mut conn = client.connect(agent.addr).await.unwrap();
    let json = [("accept", "application/json")];
    let uploads = [
        (
            "haproxy".to_owned(),
            versioned_haproxy(port, 2).into_bytes(),
        ),
        (
            "certificates/www.example.com.pem".to_owned(),
            s.pki
                .issue("www", "www.example.com", &["--server"])
                .bundle(),
        ),
        (
            "custom503".to_owned(),
            b"HTTP/1.0 503 Service Unavailable\r\n\r\ndown".to_vec(),
        ),
    ];
    for (file, body) in &uploads {
        let r = conn
            .request("PUT", &format!("/instances/{ID}/{file}"), body, &json)
            .await
            .unwrap();
        assert_eq!(r.status, 507, "{file}: {}", r.body);
        assert_eq!(r.json()["code"], "insufficient_storage", "{}", r.body);
    }
    // A new instance on a full disk: 507, and no trace of it.
    let other = "635bbdc6-65cd-41fc-b879-22c02aaf8951";
    let r = conn
        .request(
            "PUT",
            &format!("/instances/{other}/haproxy"),
            versioned_haproxy(free_port(), 3).as_bytes(),
            &json,
        )
        .await
        .unwrap();
    assert!(matches!(r.status, 507 | 409), "{}", r.body);
    assert_eq!(
        conn.get(&format!("/instances/{other}"))
            .await
            .unwrap()
            .status,
        404
    );

    // Nothing changed: same files, no new file, haproxy serves the old configuration.
    assert_eq!(std::fs::read(&cfg).unwrap(), before);
    assert_eq!(std::fs::read(&custom503).unwrap(), before_503);
    let dir = Path::new(&root).join(format!("state/instances/{ID}"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["custom503.http", "haproxy.cfg"], "{names:?}");
    assert!(http_get(port).unwrap().ends_with("v1"));
    let log = agent.log_text();
    assert!(!log.contains("cannot restore"), "{log}");

    // Space again: the same upload goes through.
    std::fs::remove_file(Path::new(&root).join("filler")).unwrap();
    let r = conn
        .request(
            "PUT",
            &format!("/instances/{ID}/haproxy"),
            &uploads[0].1,
            &json,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(eventually(5, async || http_get(port).is_ok_and(|r| r.ends_with("v2"))).await);
    disk.agent = Some(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_clamps_the_cap_and_uploads_still_apply() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n[server]\nlisten = [\"{addr}\"]\ncert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{ca}\"\n[limits]\nmax_connections = 1000\n",
            d = dir.path().display(),
            c = s.server.cert.display(),
            k = s.server.key.display(),
            ca = s.pki.ca_cert().display()
        ),
    )
    .unwrap();
    // config check refuses a cap the descriptor limit cannot hold...
    let check = Command::new("prlimit")
        .args(["--nofile=512:512", "--"])
        .arg(bin())
        .args(["config", "check", "--agent"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("limits.max_connections"),
        "{check:?}"
    );
    // ...and the agent clamps it, with a warning. (512: haproxy's master needs about
    // 230 descriptors of its own, whatever its configuration.)
    let log = dir.path().join("agent.log");
    let mut child = Command::new("prlimit")
        .args(["--nofile=512:512", "--"])
        .arg(bin())
        .args(["agent", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child, PathBuf);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            kill_processes_with(&self.1.display().to_string());
        }
    }
    let guard = Kill(&mut child, dir.path().to_path_buf());
    wait_listening(guard.0, addr, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // Log lines reach the file within the flush period, not at once.
    assert!(
        eventually(5, async || log_text().contains("clamped_to=448")).await,
        "{}",
        log_text()
    );

    // Idle clients take every slot they can; the rest are refused, not left hanging.
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let mut idle = Vec::new();
    for _ in 0..470 {
        if let Ok(Ok(mut conn)) =
            tokio::time::timeout(Duration::from_secs(5), client.connect(addr)).await
            && let Ok(r) = conn.get("/").await
        {
            assert_eq!(r.status, 200);
            idle.push(conn);
        }
    }
    assert_eq!(idle.len(), 448, "connections served");
    // With one slot free, an upload still applies: it has its reserve of descriptors.
    idle.pop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fe = free_port();
    let r = client
        .request(
            addr,
            "PUT",
            &format!("/instances/{ID}/haproxy"),
            versioned_haproxy(fe, 7).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(eventually(5, async || http_get(fe).is_ok_and(|r| r.ends_with("v7"))).await);
    assert!(!log_text().contains("accept failed"), "{}", log_text());
    drop(idle);
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_haproxy_is_brought_in_line_with_the_files_on_disk() {
    let s = setup();
    let mut agent = Agent::start(AgentOptions::new(&s.pki, &s.server));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let port = free_port();
    let r = client
        .request(
            agent.addr,
            "PUT",
            &format!("/instances/{ID}/haproxy"),
            versioned_haproxy(port, 1).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(http_get(port).unwrap().ends_with("v1"));
    // Killed after the new file reached the disk, before haproxy reloaded: the moment
    // a crash trial hits once in a while, made certain here.
    agent.kill9();
    std::fs::write(
        agent
            .state_dir()
            .join(format!("instances/{ID}/haproxy.cfg")),
        versioned_haproxy(port, 2),
    )
    .unwrap();
    agent.start_again();
    assert!(
        eventually(10, async || http_get(port).is_ok_and(|r| r.ends_with("v2"))).await,
        "haproxy still serves {:?}: {}",
        http_get(port),
        agent.log_text()
    );
    agent.wait_log(
        "brought in line with the files on disk",
        Duration::from_secs(10),
    );
    // An unchanged instance is adopted as it is, without a reload.
    agent.kill9();
    agent.start_again();
    agent.wait_log("haproxy: adopted (pid", Duration::from_secs(10));
    assert!(http_get(port).unwrap().ends_with("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_of_a_busy_agent_reach_the_log_before_a_kill_9() {
    let s = setup();
    let mut agent =
        Agent::start(AgentOptions::new(&s.pki, &s.server).toml("[limits]\nworker_threads = 1"));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let started = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (client, addr, stop) = (client.clone(), agent.addr, stop.clone());
        load.push(tokio::spawn(async move {
            // When each request was answered, since `started`. A new connection for
            // each: the handshakes keep the agent's one worker busy, so it seldom runs
            // out of work (when it would write what it collected).
            let mut done = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.get(addr, "/status").await {
                    Ok(r) if r.status == 200 => done.push(started.elapsed()),
                    _ => break,
                }
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Killed under load, while workers hold lines they have not written yet.
    let killed_at = started.elapsed();
    agent.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered_before = 0;
    let mut total = 0;
    for task in load {
        let done = task.await.unwrap();
        total += done.len();
        answered_before += done
            .iter()
            .filter(|t| **t + Duration::from_millis(500) < killed_at)
            .count();
    }
    let logged = agent
        .log_text()
        .lines()
        .filter(|l| l.contains("path=/status"))
        .count();
    assert!(
        answered_before > 50,
        "too little load: {answered_before} of {total}"
    );
    // Every request answered more than 500 ms (FLUSH_EVERY is 100 ms) before the kill
    // is in the log.
    assert!(
        logged >= answered_before,
        "{logged} lines logged, {answered_before} requests answered 500 ms before the kill ({total} in all)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_stays_in_the_foreground_fails_within_the_operation_timeout() {
    let s = setup();
    // `include` is refused by the directive policy unless an operator allows it.
    let agent = Agent::start(AgentOptions::new(&s.pki, &s.server).toml(
        "[instances]\noperation_timeout = \"2s\"\n[instances.policy]\nallow_directives = [\"include\"]",
    ));
    let client = Client::new(&s.pki.ca_cert(), Some(&s.client));
    let included = tempfile::tempdir().unwrap();
    std::fs::write(included.path().join("fg.conf"), "foreground = yes\n").unwrap();
    // Readable by the instance's own daemon user.
    for (path, mode) in [
        (included.path().to_path_buf(), 0o755),
        (included.path().join("fg.conf"), 0o644),
    ] {
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
    }
    let (accept, connect) = (free_port(), free_port());
    let service =
        format!("[x]\nclient = yes\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\n");
    let sneaky = format!("include = {}\n{service}", included.path().display());
    let put = |body: String| {
        let client = client.clone();
        let addr = agent.addr;
        async move {
            let mut conn = client.connect(addr).await.unwrap();
            conn.request(
                "PUT",
                &format!("/instances/{ID}/stunnel"),
                body.as_bytes(),
                &[("accept", "application/json")],
            )
            .await
            .unwrap()
        }
    };
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), put(sneaky))
        .await
        .expect("the request hangs");
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["code"], "apply_failed", "{}", r.body);
    assert!(r.body.contains("did not detach"), "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The instance is not left locked: the next operation on it goes through.
    let r = tokio::time::timeout(Duration::from_secs(20), put(service))
        .await
        .expect("the instance stays locked");
    assert_eq!(r.status, 201, "{}", r.body);
}
