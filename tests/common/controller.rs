//! The real controller binary for black-box tests: admin and appliance listeners on
//! loopback ports with certificates the controller issues from its own CA, the `process`
//! backend spawning real agents on their own loopback addresses. Everything it spawned
//! (agents, haproxy, stunnel) is killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use tempfile::TempDir;

use super::{Client, Resp, bin, free_port, wait_listening};

pub struct Controller {
    child: Option<Child>,
    pub admin: SocketAddr,
    pub appliance_zone: SocketAddr,
    pub config: PathBuf,
    pub dir: TempDir,
    pub log: PathBuf,
    state: PathBuf,
}

impl Controller {
    /// `extra` holds TOML tables (not `[backend]`, which the harness writes from
    /// `first_address`).
    pub fn start(db_url: &str, first_address: &str, extra: &str) -> Controller {
        Controller::start_with(db_url, first_address, extra, "")
    }

    /// [`Controller::start`] with more keys for the `[backend]` table.
    pub fn start_with(
        db_url: &str,
        first_address: &str,
        extra: &str,
        backend_extra: &str,
    ) -> Controller {
        Controller::start_on(
            db_url,
            "127.0.0.1",
            &format!(
                "first_address = \"{first_address}\"\nagent_port = {port}\n{backend_extra}",
                port = free_port()
            ),
            extra,
        )
    }

    /// A controller whose appliance listener is on `appliance_ip` and whose `[backend]`
    /// table is `backend` (the `netns` backend's appliances reach it on its bridge).
    /// `@APPLIANCE_ZONE@` in `extra` stands for the appliance listener's address.
    pub fn start_on(db_url: &str, appliance_ip: &str, backend: &str, extra: &str) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let appliance_zone: SocketAddr = format!("{appliance_ip}:{}", free_port()).parse().unwrap();
        let config = dir.path().join("controller.toml");
        let extra = extra.replace("@APPLIANCE_ZONE@", &appliance_zone.to_string());
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{d}\"\n[database]\nurl = \"{db_url}\"\n\
                 [[listeners]]\naddress = \"{admin}\"\nzone = \"admin\"\n\
                 [[listeners]]\naddress = \"{appliance_zone}\"\nzone = \"appliance\"\n\
                 {extra}\n[backend]\n{backend}\n",
                d = dir.path().join("state").display(),
            ),
        )
        .unwrap();
        let state = dir.path().join("state");
        Controller::launch(dir, config, admin, appliance_zone, state)
    }

    /// A second controller sharing this one's database and state directory (its CA,
    /// its appliances), with listeners of its own: several controllers sharing the work.
    pub fn start_peer(&self) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let appliance_zone: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace(&self.admin.to_string(), &admin.to_string())
            .replace(
                &self.appliance_zone.to_string(),
                &appliance_zone.to_string(),
            );
        let config = dir.path().join("controller.toml");
        std::fs::write(&config, text).unwrap();
        Controller::launch(dir, config, admin, appliance_zone, self.state.clone())
    }

    /// Starts the binary on `config`, its log in `dir`.
    fn launch(
        dir: TempDir,
        config: PathBuf,
        admin: SocketAddr,
        appliance_zone: SocketAddr,
        state: PathBuf,
    ) -> Controller {
        let mut c = Controller {
            child: None,
            admin,
            appliance_zone,
            config,
            log: dir.path().join("controller.log"),
            state,
            dir,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(bin())
            .args(["controller", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_listening(&mut child, self.admin, &self.log);
        wait_listening(&mut child, self.appliance_zone, &self.log);
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.state_dir().join("ca/ca.crt")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An appliance's certificate and key as the controller issued them.
    pub fn appliance_creds(&self, id: &str) -> super::Creds {
        let tls = self.state_dir().join("appliances").join(id).join("tls");
        super::Creds {
            cert: tls.join("agent.crt"),
            key: tls.join("agent.key"),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.ca_cert(), None)
    }

    /// A connection to the admin listener; a failure shows the controller's log.
    async fn connect_admin(&self) -> super::Conn {
        match self.client().connect(self.admin).await {
            Ok(conn) => conn,
            Err(e) => panic!("connect {}: {e}\n{}", self.admin, self.log_text()),
        }
    }

    /// `applianced controller user add`; returns the generated password.
    pub fn add_user(&self, name: &str, admin: bool) -> String {
        user_add(&self.config, name, admin)
    }

    pub async fn token(&self, name: &str, password: &str) -> String {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
        );
        let mut conn = self.connect_admin().await;
        let r = conn
            .request("POST", "/v1/tokens", b"", &[("authorization", &basic)])
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["token"].as_str().unwrap().to_string()
    }

    /// One API call with a bearer token.
    /// The events of an appliance, each with its webhook deliveries.
    pub async fn events(&self, token: &str, id: &str) -> serde_json::Value {
        let r = self
            .call(token, "GET", &format!("/v1/appliances/{id}/events"), "")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    pub async fn call(&self, token: &str, method: &str, path: &str, body: &str) -> Resp {
        let bearer = format!("Bearer {token}");
        let mut conn = self.connect_admin().await;
        conn.request(
            method,
            path,
            body.as_bytes(),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
        )
        .await
        .unwrap()
    }

    /// A request answered with 202 and a task: checks the 202, its `Location` and
    /// `Retry-After`, waits for the task to finish; the 202's body and the finished task.
    pub async fn run_task(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> (serde_json::Value, serde_json::Value) {
        let r = self.call(token, method, path, body).await;
        assert_eq!(r.status, 202, "{method} {path}: {}", r.body);
        assert_eq!(r.headers["retry-after"], "1");
        let accepted = r.json();
        let location = r.headers["location"].to_str().unwrap().to_string();
        assert_eq!(
            location,
            format!("/v1/tasks/{}", accepted["id"].as_str().unwrap())
        );
        let done = self
            .wait_task(token, &location, Duration::from_secs(30))
            .await;
        (accepted, done)
    }

    /// Polls `GET /v1/tasks/:id` until it answers 200 (202 + Retry-After before).
    pub async fn wait_task(
        &self,
        token: &str,
        location: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.call(token, "GET", location, "").await;
            match r.status {
                200 => return r.json(),
                202 => {
                    assert_eq!(r.headers["retry-after"], "1");
                    assert_eq!(r.headers["location"], location);
                }
                other => panic!("task {location}: {other} {}", r.body),
            }
            assert!(
                Instant::now() < deadline,
                "task {location} not done: {}\n{}",
                r.body,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls an appliance until it is in `state`.
    pub async fn wait_state(
        &self,
        token: &str,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self
                .call(token, "GET", &format!("/v1/appliances/{id}"), "")
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let a = r.json();
            if a["state"] == state {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "appliance {id} is {} after {timeout:?}, not {state}\n{}",
                a["state"],
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The live agent processes of one appliance.
    pub fn agents_of(&self, id: &str) -> Vec<i32> {
        let config = self
            .state_dir()
            .join("appliances")
            .join(id)
            .join("agent.toml");
        super::processes_with(&config.display().to_string())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill9();
        // Agents, haproxy and stunnel all name files under the state directory.
        super::kill_processes_with(&self.state_dir().display().to_string());
    }
}

/// `applianced controller user add NAME [--admin] --config CONFIG`; returns the
/// generated password it prints.
pub fn user_add(config: &std::path::Path, name: &str, admin: bool) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["controller", "user", "add", name, "--config"])
        .arg(config);
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap()
        .to_string()
}

/// A haproxy configuration for an appliance: every request on `{MYIP}:port` is
/// answered "served by" and the appliance's address.
pub fn served_by_config(port: u16) -> String {
    format!(
        "global\n    maxconn 64\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\nfrontend fe\n    bind {{MYIP}}:{port}\n    http-request return status 200 content-type text/plain string \"served by {{MYIP}}\"\n"
    )
}

/// A plain HTTP/1.0 GET to `addr` (within 5 s): the whole response.
pub async fn http_get(addr: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nhost: x\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("no answer from {addr} in 5 s"))?
}
