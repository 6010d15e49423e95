//! systemd integration, black-box: readiness only after the listeners are bound,
//! watchdog pings, reload and stop notifications, through a notify socket the test owns.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn recv(sock: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    let left = deadline.checked_duration_since(Instant::now())?;
    sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    sock.recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn ready_only_after_bind_then_watchdog_pings_reload_and_stopping() {
    let pki = Pki::new();
    let server = pki.server("server", "agent-1");
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["agent", "--listen", &format!("127.0.0.1:{port}"), "--cert"])
        .arg(&server.cert)
        .arg("--key")
        .arg(&server.key)
        .arg("--client-ca")
        .arg(pki.ca_cert())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "300000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let first = recv(&sock, deadline).expect("no notification");
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first message was {first:?}"
    );
    // At the moment READY=1 arrives, the listener already accepts.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY=1 before the listener was bound"
    );

    // Watchdog pings at half the interval.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pings = 0;
    while pings < 3 {
        let msg = recv(&sock, deadline).expect("watchdog pings stopped");
        if msg.lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }

    // SIGHUP: RELOADING=1 then READY=1 again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        let msg = recv(&sock, deadline).expect("no READY after reload");
        if !msg.contains("WATCHDOG=1") {
            seen.push(msg);
        }
    }
    assert!(seen[0].contains("RELOADING=1"), "{seen:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let msg = recv(&sock, deadline).expect("no STOPPING=1");
        if msg.contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
