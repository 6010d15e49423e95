//! Black-box test harness: certificates made by the real `applianced pki`, the real
//! agent binary on a loopback port, and a rustls + hyper client speaking real mTLS.
#![allow(dead_code)]

pub mod controller;
pub mod machine;
pub mod postgres;

use std::error::Error as StdError;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_applianced")
}

/// Runs the binary and panics with its output unless it succeeds.
pub fn run_ok(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run applianced");
    assert!(
        out.status.success(),
        "applianced {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test PKI: a CA made by `applianced pki init` in a temporary directory.
pub struct Pki {
    pub root: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::named("Test CA")
    }

    pub fn named(cn: &str) -> Pki {
        let root = tempfile::tempdir().unwrap();
        let pki = Pki { root };
        run_ok(&[
            "pki",
            "init",
            "--dir",
            pki.ca_dir().to_str().unwrap(),
            "--cn",
            cn,
        ]);
        pki
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.root.path().join("ca")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join("ca.crt")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Issues `name.crt` / `name.key` with extra `pki issue` arguments.
    pub fn issue(&self, name: &str, cn: &str, extra: &[&str]) -> Creds {
        let out = self.path(name);
        let ca_dir = self.ca_dir();
        let mut args = vec![
            "pki",
            "issue",
            "--dir",
            ca_dir.to_str().unwrap(),
            "--cn",
            cn,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        run_ok(&args);
        Creds {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
        }
    }

    pub fn server(&self, name: &str, cn: &str) -> Creds {
        self.issue(name, cn, &["--server", "--san", "127.0.0.1"])
    }

    pub fn client(&self, name: &str, cn: &str) -> Creds {
        self.issue(name, cn, &["--client"])
    }
}

#[derive(Clone, Debug)]
pub struct Creds {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Creds {
    /// Key then certificate chain: the bundle form the agent accepts.
    pub fn bundle(&self) -> Vec<u8> {
        let mut b = std::fs::read(&self.key).unwrap();
        b.extend(std::fs::read(&self.cert).unwrap());
        b
    }
}

/// Waits until `child` accepts TCP connections on `addr`; panics with its log when it
/// exits or does not listen within 15 s.
pub fn wait_listening(child: &mut Child, addr: SocketAddr, log: &Path) {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited early with {status}: {}", log_text());
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {addr}: {}", log_text());
}

/// A loopback port nobody listens on right now, below the kernel's ephemeral range (so
/// that no outgoing connection takes it as its source port before the test's server
/// binds it), and not one this test process was given before (two listeners of one
/// controller must not get the same).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.max(10_100));
    // A different sequence in each test process.
    let mut x = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    loop {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = (low + (x % u64::from(high - low)) as u32) as u16;
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&port) || StdListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
}

/// The agent binary running on a loopback port.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub log: PathBuf,
    args: Vec<std::ffi::OsString>,
}

pub struct AgentOptions<'a> {
    pub server: &'a Creds,
    pub client_ca: PathBuf,
    /// Extra TOML appended to the generated configuration.
    pub extra_toml: String,
    pub extra_args: Vec<String>,
}

impl<'a> AgentOptions<'a> {
    pub fn new(pki: &Pki, server: &'a Creds) -> Self {
        AgentOptions {
            server,
            client_ca: pki.ca_cert(),
            extra_toml: String::new(),
            extra_args: vec![],
        }
    }

    pub fn toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra_args.push(a.into());
        self
    }
}

impl Agent {
    pub fn start(opts: AgentOptions<'_>) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        // Searchable by others: instances' daemons run as their own users.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.path().join("agent.toml");
        let toml = format!(
            "state_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\nlog_level = \"debug\"\n{extra}",
            d = dir.path().display(),
            extra = opts.extra_toml
        );
        std::fs::write(&config, toml).unwrap();
        let log = dir.path().join("agent.log");
        let mut args: Vec<std::ffi::OsString> =
            vec!["agent".into(), "--config".into(), config.into()];
        args.extend(["--listen".into(), addr.to_string().into()]);
        args.extend(["--cert".into(), opts.server.cert.clone().into()]);
        args.extend(["--key".into(), opts.server.key.clone().into()]);
        args.extend(["--client-ca".into(), opts.client_ca.clone().into()]);
        args.extend(opts.extra_args.iter().map(Into::into));
        let child = Agent::spawn(&args, &log);
        let mut agent = Agent {
            child,
            addr,
            dir,
            log,
            args,
        };
        agent.wait_listening();
        agent
    }

    fn spawn(args: &[std::ffi::OsString], log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(bin())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent")
    }

    /// `kill -9` of the agent, nothing else.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the agent again with the same configuration, directories and port.
    pub fn start_again(&mut self) {
        self.child = Agent::spawn(&self.args, &self.log);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        wait_listening(&mut self.child, self.addr, &self.log);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("log never contained {needle:?}: {}", self.log_text());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its haproxy and stunnel outlive it (as in production); they name files in dir.
        kill_processes_with(&self.dir.path().display().to_string());
    }
}

/// Pids of live processes (not zombies) whose command line mentions `needle`.
pub fn processes_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if zombie {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILL to every process whose command line mentions `needle`.
pub fn kill_processes_with(needle: &str) {
    for pid in processes_with(needle) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// An mTLS client.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Client {
    /// A client trusting `ca`, presenting `creds` when given.
    pub fn new(ca: &Path, creds: Option<&Creds>) -> Client {
        Client::with_alpn(ca, creds, vec![b"http/1.1".to_vec()])
    }

    pub fn with_alpn(ca: &Path, creds: Option<&Creds>, alpn: Vec<Vec<u8>>) -> Client {
        let mut roots = RootCertStore::empty();
        for c in applianced::certs::load_certs(ca).unwrap() {
            roots.add(c).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match creds {
            Some(c) => builder
                .with_client_auth_cert(
                    applianced::certs::load_certs(&c.cert).unwrap(),
                    applianced::certs::load_key(&c.key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        Client {
            config: Arc::new(config),
        }
    }

    pub async fn tls(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }

    /// A keep-alive HTTP/1.1 connection.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, BoxError> {
        let tls = self.tls(addr).await?;
        let server_cn = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| applianced::certs::CertInfo::parse(c).ok())
            .and_then(|i| i.subject_cn);
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            server_cn,
            _task: task,
        })
    }

    /// One request on a new connection.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Resp, BoxError> {
        let mut conn = self.connect(addr).await?;
        conn.request(method, path, body, &[]).await
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Resp, BoxError> {
        self.request(addr, "GET", path, b"").await
    }
}

pub type BoxError = Box<dyn StdError + Send + Sync>;

pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    pub server_cn: Option<String>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Conn {
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Resp, BoxError> {
        self.sender.ready().await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "agent");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Resp, BoxError> {
        self.request("GET", path, b"", &[]).await
    }
}

/// One HTTP/1.1 response read off a raw stream, head and body as text: the head, then
/// as many bytes as its content-length says. An end of stream before that is an error.
pub async fn read_http1_response(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed mid-response: {}", String::from_utf8_lossy(&got)),
            ));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Ok(text);
            }
        }
    }
}

/// The TLS alert in an error's source chain, if any.
pub fn tls_alert(err: &(dyn StdError + 'static)) -> Option<AlertDescription> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::AlertReceived(a)) = e.downcast_ref::<rustls::Error>() {
            return Some(*a);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(rustls::Error::AlertReceived(a)) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(*a);
        }
        cur = e.source();
    }
    None
}

/// Asserts that the connection was refused in the TLS handshake with `alert`: no HTTP
/// response at all. (With TLS 1.3 the client finishes its side of the handshake first and
/// reads the server's alert on its first read.)
pub async fn assert_refused(client: &Client, addr: SocketAddr, alert: AlertDescription) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = match client.tls(addr).await {
        Ok(tls) => tls,
        Err(e) => {
            assert_eq!(
                tls_alert(&e),
                Some(alert),
                "unexpected handshake error: {e:?}"
            );
            return;
        }
    };
    let _ = tls
        .write_all(b"GET /status HTTP/1.1\r\nhost: a\r\n\r\n")
        .await;
    let mut buf = vec![0u8; 4096];
    match tls.read(&mut buf).await {
        Ok(n) => panic!(
            "expected a TLS refusal ({alert:?}), got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert_eq!(tls_alert(&e), Some(alert), "unexpected error: {e:?}"),
    }
}

/// A tiny HTTP backend on 127.0.0.2 answering every request with `body`. (Other test
/// servers live on 127.0.0.1, so a stopped backend's port stays closed.)
pub struct Backend {
    pub port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    pub async fn start(body: &'static str) -> Backend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Backend {
            port,
            task: Some(task),
        }
    }

    /// Stops the backend; its listener is closed when this returns.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A plain HTTP/1.0 GET to 127.0.0.1:port; returns the whole response text.
pub fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nhost: test\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// An HTTPS GET through a TLS frontend: the certificate CN it presented and the
/// response text. `server_name` is sent as SNI and verified against `ca`.
pub async fn https_get(
    ca: &Path,
    port: u16,
    server_name: &str,
) -> Result<(String, String), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = RootCertStore::empty();
    for c in applianced::certs::load_certs(ca)? {
        roots.add(c)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(server_name.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| applianced::certs::CertInfo::parse(c).ok())
        .and_then(|i| i.subject_cn)
        .unwrap_or_default();
    tls.write_all(format!("GET / HTTP/1.0\r\nhost: {server_name}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out).await {
        Ok(_) => {}
        // Some daemons close without close_notify after HTTP/1.0.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    Ok((cn, String::from_utf8_lossy(&out).into_owned()))
}

/// A Python virtualenv under the target directory with `packages` (pinned) installed
/// from PyPI: created once, reused by later runs.
#[allow(dead_code)]
pub fn venv(name: &str, packages: &[&str]) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let venv = target.join(name);
    let marker = venv.join(format!("installed {}", packages.join(" ")));
    // Tests of one binary run in parallel, and other binaries may want the same
    // virtualenv: one makes it while the others wait, then find it made.
    std::fs::create_dir_all(&target).unwrap();
    let lock = std::fs::File::create(target.join(format!(".{name}.lock"))).unwrap();
    lock.lock().expect("lock the virtualenv");
    if marker.exists() {
        return venv;
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("python3 runs");
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv));
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages));
    std::fs::write(&marker, "").unwrap();
    venv
}
