//! The agent's configuration (`/etc/applianced/agent.toml`). Every key is documented in
//! `packaging/agent.toml`; command-line flags override the main ones.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, HumanDuration, Problem};

pub const DEFAULT_PATH: &str = "/etc/applianced/agent.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/applianced";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This appliance's id, reported by `GET /`. Default: the CN of the agent certificate.
    #[serde(default)]
    pub appliance_id: Option<String>,
    /// The management address substituted for `{MYIP}`. Default: the first listen address
    /// that is not a wildcard.
    #[serde(default)]
    pub management_address: Option<IpAddr>,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter; `RUST_LOG` wins.
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub status: StatusSection,
    #[serde(default)]
    pub instances: InstancesSection,
    /// The controller this appliance reports to; unset: the agent reports to nobody.
    #[serde(default)]
    pub controller: Option<ControllerSection>,
    /// OpenStack Octavia's amphora API 1.0 and its health heartbeat.
    #[serde(default)]
    pub octavia: OctaviaSection,
}

/// Running as Octavia's amphora agent: its API 1.0 (always served), the extra listeners
/// its controller expects (port 9443), the paths its rendered haproxy configurations
/// name, and the signed UDP heartbeat to its health managers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OctaviaSection {
    /// The amphora id reported in heartbeats (Octavia's `[amphora_agent] amphora_id`).
    /// Default: the appliance id.
    pub amphora_id: Option<String>,
    /// Extra addresses the agent API also listens on (Octavia's `bind_host:bind_port`,
    /// usually port 9443); same TLS and API as `server.listen`.
    pub listen: Vec<SocketAddr>,
    /// Octavia's `[haproxy_amphora] base_path`, as its templates name it.
    pub base_path: PathBuf,
    /// Octavia's `[haproxy_amphora] base_cert_dir`, as its templates name it.
    pub base_cert_dir: PathBuf,
    /// Octavia's `[health_manager] heartbeat_key` (HMAC key of the heartbeats).
    pub heartbeat_key: Option<String>,
    /// Octavia's `[health_manager] heartbeat_interval`.
    pub heartbeat_interval: HumanDuration,
    /// Octavia's `[health_manager] controller_ip_port_list`, `IP:PORT` each; empty: no
    /// heartbeat is sent.
    pub controller_ip_port_list: Vec<SocketAddr>,
}

impl Default for OctaviaSection {
    fn default() -> Self {
        OctaviaSection {
            amphora_id: None,
            listen: Vec::new(),
            base_path: PathBuf::from("/var/lib/octavia"),
            base_cert_dir: PathBuf::from("/var/lib/octavia/certs"),
            heartbeat_key: None,
            heartbeat_interval: HumanDuration::secs(10),
            controller_ip_port_list: Vec::new(),
        }
    }
}

/// Callbacks to the controller: `launched` once serving, `heartbeat` periodically,
/// `stopped` on graceful shutdown, each over mutual TLS with the agent's own certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// Base URL of the controller's `appliance` zone, `https://HOST:PORT`.
    pub url: String,
    /// CA bundle the controller's certificate must chain to. Default: `server.client_ca`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: HumanDuration,
}

fn default_heartbeat() -> HumanDuration {
    HumanDuration::secs(30)
}

/// How instances' daemons are run.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManagerKind {
    /// The agent starts haproxy and stunnel itself (detached) and adopts them on restart.
    #[default]
    Direct,
    /// Through the `haproxy@<id>` and `stunnel@<id>` template units.
    Systemd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstancesSection {
    pub service_manager: ServiceManagerKind,
    /// haproxy program (a name is looked up in PATH).
    pub haproxy: PathBuf,
    /// stunnel program.
    pub stunnel: PathBuf,
    /// systemctl program, for the systemd service manager.
    pub systemctl: PathBuf,
    /// Interface that bind addresses the host lacks are added to; unset: addresses are
    /// not managed.
    pub vip_interface: Option<String>,
    /// ip program (iproute2), for address management.
    pub ip: PathBuf,
    /// Accept certificate bundles outside their validity window (with a warning).
    pub allow_expired_certificates: bool,
    /// Time a daemon start, reload or stop may take before it counts as failed.
    pub operation_timeout: HumanDuration,
    /// When the agent runs as root (direct service manager): each instance's haproxy and
    /// stunnel run as that instance's own unprivileged user and group, taken from
    /// `daemon_id_first`.. (`daemon_id_count` of them).
    pub isolate_daemons: bool,
    pub daemon_id_first: u32,
    pub daemon_id_count: u32,
    /// With the systemd service manager: the group of the user the template units run
    /// the daemons as (the agent must be a member); instances' files are made readable
    /// by it. Unset: files are left as the agent writes them.
    pub daemon_group: Option<String>,
    /// What uploaded configurations may do beyond their own instance's files.
    pub policy: PolicySection,
}

/// The first id of the daemons' users and groups: 0x70000000, above the ranges Debian,
/// systemd (dynamic users, homed, nspawn) and container engines allocate.
pub const DAEMON_ID_FIRST: u32 = 0x7000_0000;

/// `[instances.policy]`: the directive policy's allowances. Empty by default: uploaded
/// configurations may name only their own instance's files and may not load code, run
/// programs or change user.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// haproxy directives or stunnel options accepted whatever their arguments.
    pub allow_directives: Vec<String>,
    /// Absolute path prefixes any directive may name.
    pub allow_paths: Vec<PathBuf>,
}

impl Default for InstancesSection {
    fn default() -> Self {
        InstancesSection {
            service_manager: ServiceManagerKind::Direct,
            haproxy: PathBuf::from("haproxy"),
            stunnel: PathBuf::from("stunnel"),
            systemctl: PathBuf::from("systemctl"),
            vip_interface: None,
            ip: PathBuf::from("ip"),
            allow_expired_certificates: true,
            operation_timeout: HumanDuration::secs(10),
            isolate_daemons: true,
            daemon_id_first: DAEMON_ID_FIRST,
            daemon_id_count: 65536,
            daemon_group: None,
            policy: PolicySection::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Addresses to bind (the management addresses, never the load-balanced ones).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// The agent's certificate chain (leaf first), PEM.
    pub cert: Option<PathBuf>,
    /// The agent's private key, PEM, unencrypted.
    pub key: Option<PathBuf>,
    /// CA bundle that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// CA bundle a new agent certificate (`PUT /certificate`) must chain to.
    /// Default: `client_ca`.
    #[serde(default)]
    pub server_ca: Option<PathBuf>,
    /// CRL files (PEM or DER); a client certificate listed in any is refused.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// Refuse TLS 1.2.
    #[serde(default)]
    pub tls13_only: bool,
    /// When not empty, only clients whose certificate CN or a DNS SAN matches one of
    /// these patterns (`*` matches any run of characters) may connect.
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    /// Clients (CN / DNS SAN patterns) whose requests may name the user they act for in
    /// `X-Applianced-Actor`, logged with the request. Default: the controller
    /// (`applianced-controller`). From anyone else the header is ignored.
    #[serde(default)]
    pub actor_clients: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub handshake_timeout: HumanDuration,
    pub header_timeout: HumanDuration,
    pub idle_timeout: HumanDuration,
    /// Time allowed to receive a request body.
    pub body_timeout: HumanDuration,
    /// Time in-flight requests get to finish after SIGTERM.
    pub shutdown_timeout: HumanDuration,
    pub max_connections: usize,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    /// Threads serving the API. The agent is the management plane: by default it keeps
    /// to one, leaving the other cores to haproxy and stunnel. 0: one per CPU.
    pub worker_threads: usize,
}

impl Default for Limits {
    /// The transport's own defaults, with the agent's body limits and one worker.
    fn default() -> Self {
        let t = crate::transport::ServerLimits::default();
        Limits {
            handshake_timeout: HumanDuration(t.handshake_timeout),
            header_timeout: HumanDuration(t.header_timeout),
            idle_timeout: HumanDuration(t.idle_timeout),
            body_timeout: HumanDuration::secs(60),
            shutdown_timeout: HumanDuration(t.shutdown_timeout),
            max_connections: t.max_connections,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: t.max_header_bytes,
            worker_threads: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusSection {
    /// How often the background sampler refreshes `/status`.
    pub interval: HumanDuration,
}

impl Default for StatusSection {
    fn default() -> Self {
        StatusSection {
            interval: HumanDuration::secs(5),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/applianced")
}

/// Command-line overrides of the configuration file.
#[derive(Debug, Default, Clone)]
pub struct AgentOverrides {
    pub listen: Vec<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub crl: Vec<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
}

pub use crate::transport::tls::TlsPaths;

impl AgentConfig {
    /// Loads the configuration: the file at `path` (a missing default file is allowed
    /// when `explicit` is false), then the overrides, then validation.
    pub fn load(
        path: &Path,
        explicit: bool,
        overrides: AgentOverrides,
    ) -> Result<AgentConfig, ConfigError> {
        let from_file = explicit || path.exists();
        let mut config: AgentConfig = if from_file {
            super::read_toml(path)?
        } else {
            super::parse_toml("").map_err(|(k, m)| ConfigError::one(None, &k, m))?
        };
        config.apply(overrides);
        config.validate().map_err(|problems| ConfigError {
            file: from_file.then(|| path.display().to_string()),
            problems,
        })?;
        Ok(config)
    }

    fn apply(&mut self, o: AgentOverrides) {
        if !o.listen.is_empty() {
            self.server.listen = o.listen;
        }
        if !o.crl.is_empty() {
            self.server.crl = o.crl;
        }
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v.into();
                }
            };
        }
        set!(self.server.cert, o.cert.map(Some));
        set!(self.server.key, o.key.map(Some));
        set!(self.server.client_ca, o.client_ca.map(Some));
        set!(self.state_dir, o.state_dir);
        set!(self.run_dir, o.run_dir);
    }

    /// Every problem of the configuration, each with its key.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.into(),
                message,
            })
        };
        if self.server.listen.is_empty() {
            problem(
                "server.listen",
                "at least one address to listen on is required".into(),
            );
        }
        let files = [
            ("server.cert", self.server.cert.as_ref()),
            ("server.key", self.server.key.as_ref()),
            ("server.client_ca", self.server.client_ca.as_ref()),
        ];
        for (key, value) in files {
            match value {
                None => problem(key, "required".into()),
                Some(p) => {
                    if let Err(e) = std::fs::metadata(p) {
                        problem(key, format!("{}: {e}", p.display()));
                    }
                }
            }
        }
        if let Some(g) = &self.instances.daemon_group
            && self.instances.service_manager == ServiceManagerKind::Systemd
            && !matches!(nix::unistd::Group::from_name(g), Ok(Some(_)))
        {
            problem(
                "instances.daemon_group",
                format!("no group {g:?} on this system"),
            );
        }
        let known = crate::agent::policy::known_directives();
        for d in &self.instances.policy.allow_directives {
            if !known.iter().any(|k| k.eq_ignore_ascii_case(d)) {
                problem(
                    "instances.policy.allow_directives",
                    format!("{d:?} is not a directive the policy judges"),
                );
            }
        }
        let ids =
            u64::from(self.instances.daemon_id_first) + u64::from(self.instances.daemon_id_count);
        if self.instances.daemon_id_first < 1000
            || self.instances.daemon_id_count == 0
            || ids > 0x8000_0000
        {
            problem(
                "instances.daemon_id_first",
                format!(
                    "{}+{}: the range must start at 1000 or above, hold at least one id and end by 2147483648",
                    self.instances.daemon_id_first, self.instances.daemon_id_count
                ),
            );
        }
        for p in &self.instances.policy.allow_paths {
            if !p.is_absolute() || p == std::path::Path::new("/") {
                problem(
                    "instances.policy.allow_paths",
                    format!("{}: an absolute path other than / is required", p.display()),
                );
            }
        }
        if let Some(c) = &self.controller {
            if !c.url.starts_with("https://") || c.url.parse::<http::Uri>().is_err() {
                problem(
                    "controller.url",
                    format!("{:?}: expected https://HOST:PORT", c.url),
                );
            }
            if let Some(p) = &c.ca
                && let Err(e) = std::fs::metadata(p)
            {
                problem("controller.ca", format!("{}: {e}", p.display()));
            }
            if c.heartbeat_interval.0.is_zero() {
                problem(
                    "controller.heartbeat_interval",
                    "must be greater than zero".into(),
                );
            }
        }
        let o = &self.octavia;
        for (key, dir) in [
            ("octavia.base_path", &o.base_path),
            ("octavia.base_cert_dir", &o.base_cert_dir),
        ] {
            if !dir.is_absolute() || dir == Path::new("/") {
                problem(
                    key,
                    format!("{}: must be an absolute path below /", dir.display()),
                );
            }
        }
        if o.heartbeat_interval.0.is_zero() {
            problem(
                "octavia.heartbeat_interval",
                "must be greater than zero".into(),
            );
        }
        if !o.controller_ip_port_list.is_empty()
            && o.heartbeat_key.as_deref().unwrap_or("").is_empty()
        {
            problem(
                "octavia.heartbeat_key",
                "required when octavia.controller_ip_port_list is set".into(),
            );
        }
        if let Some(p) = &self.server.server_ca
            && let Err(e) = std::fs::metadata(p)
        {
            problem("server.server_ca", format!("{}: {e}", p.display()));
        }
        for p in &self.server.crl {
            if let Err(e) = std::fs::metadata(p) {
                problem("server.crl", format!("{}: {e}", p.display()));
            }
        }
        for pattern in &self.server.allowed_clients {
            if pattern.trim().is_empty() {
                problem("server.allowed_clients", "empty pattern".into());
            }
        }
        for (key, dir) in [("state_dir", &self.state_dir), ("run_dir", &self.run_dir)] {
            if !dir.is_absolute() {
                problem(key, format!("{}: must be an absolute path", dir.display()));
            }
        }
        let l = &self.limits;
        for (key, d) in [
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.header_timeout", l.header_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            ("limits.body_timeout", l.body_timeout),
            ("status.interval", self.status.interval),
            (
                "instances.operation_timeout",
                self.instances.operation_timeout,
            ),
        ] {
            if d.0.is_zero() {
                problem(key, "must be greater than zero".into());
            }
        }
        if l.max_connections == 0 {
            problem("limits.max_connections", "must be at least 1".into());
        }
        if l.max_body_bytes < 1024 {
            problem(
                "limits.max_body_bytes",
                format!("{} is below the minimum of 1024", l.max_body_bytes),
            );
        }
        if l.max_header_bytes < 1024 {
            problem(
                "limits.max_header_bytes",
                format!("{} is below the minimum of 1024", l.max_header_bytes),
            );
        }
        if let Some(level) = &self.log_level
            && tracing_subscriber::EnvFilter::try_new(level).is_err()
        {
            problem(
                "log_level",
                format!("{level:?} is not a log level or filter"),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The TLS file paths; valid after [`AgentConfig::validate`].
    pub fn tls_paths(&self) -> TlsPaths {
        let s = &self.server;
        let client_ca = s.client_ca.clone().unwrap_or_default();
        TlsPaths {
            cert: s.cert.clone().unwrap_or_default(),
            key: s.key.clone().unwrap_or_default(),
            server_ca: s.server_ca.clone().unwrap_or_else(|| client_ca.clone()),
            client_ca,
            crls: s.crl.clone(),
        }
    }

    /// The address `{MYIP}` stands for.
    pub fn management_ip(&self) -> Option<IpAddr> {
        self.management_address.or_else(|| {
            self.server
                .listen
                .iter()
                .map(|a| a.ip())
                .find(|ip| !ip.is_unspecified())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path) -> String {
        for f in ["c.crt", "c.key", "ca.crt"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        format!(
            "state_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n[server]\nlisten = [\"127.0.0.1:8443\"]\ncert = \"{d}/c.crt\"\nkey = \"{d}/c.key\"\nclient_ca = \"{d}/ca.crt\"\n",
            d = dir.display()
        )
    }

    #[test]
    fn loads_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            base(dir.path()) + "[limits]\nidle_timeout = \"2s\"\n",
        )
        .unwrap();
        let o = AgentOverrides {
            listen: vec!["127.0.0.2:9443".parse().unwrap()],
            ..Default::default()
        };
        let c = AgentConfig::load(&path, true, o).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.2:9443".parse().unwrap()]);
        assert_eq!(c.limits.idle_timeout.0, std::time::Duration::from_secs(2));
        assert_eq!(c.limits.max_connections, 1024);
        assert_eq!(c.management_ip(), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(c.tls_paths().server_ca, dir.path().join("ca.crt"));
    }

    #[test]
    fn rejects_unknown_keys_and_reports_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, base(dir.path()) + "[limits]\nmax_conections = 5\n").unwrap();
        let err = AgentConfig::load(&path, true, AgentOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");

        std::fs::write(
            &path,
            "state_dir = \"relative\"\n[limits]\nmax_connections = 0\n",
        )
        .unwrap();
        let err = AgentConfig::load(&path, true, AgentOverrides::default()).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "server.listen",
            "server.cert",
            "server.key",
            "server.client_ca",
            "state_dir",
            "limits.max_connections",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn controller_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            base(dir.path()) + "[controller]\nurl = \"https://127.0.0.1:8444\"\n",
        )
        .unwrap();
        let c = AgentConfig::load(&path, true, AgentOverrides::default()).unwrap();
        let section = c.controller.unwrap();
        assert_eq!(section.heartbeat_interval.0.as_secs(), 30);
        assert_eq!(section.ca, None);

        std::fs::write(
            &path,
            base(dir.path())
                + "[controller]\nurl = \"http://plain\"\nca = \"/nonexistent\"\nheartbeat_interval = \"0s\"\n",
        )
        .unwrap();
        let err = AgentConfig::load(&path, true, AgentOverrides::default()).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "controller.url",
                "controller.ca",
                "controller.heartbeat_interval"
            ]
        );
    }

    #[test]
    fn octavia_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, base(dir.path())).unwrap();
        let c = AgentConfig::load(&path, true, AgentOverrides::default()).unwrap();
        assert_eq!(c.octavia.base_path, Path::new("/var/lib/octavia"));
        assert_eq!(c.octavia.heartbeat_interval.0.as_secs(), 10);
        assert!(c.octavia.listen.is_empty() && c.octavia.controller_ip_port_list.is_empty());

        std::fs::write(
            &path,
            base(dir.path())
                + "[octavia]\nbase_path = \"relative\"\nbase_cert_dir = \"/\"\nheartbeat_interval = \"0s\"\ncontroller_ip_port_list = [\"127.0.0.1:5555\"]\n",
        )
        .unwrap();
        let err = AgentConfig::load(&path, true, AgentOverrides::default()).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "octavia.base_path",
                "octavia.base_cert_dir",
                "octavia.heartbeat_interval",
                "octavia.heartbeat_key"
            ]
        );
    }
}

#[cfg(test)]
mod shipped_example {
    /// The commented example shipped in the package parses with every key it documents.
    #[test]
    fn packaging_example_parses() {
        let text = include_str!("../../packaging/agent.toml");
        let config: super::AgentConfig = super::super::parse_toml(text).unwrap();
        assert_eq!(config.server.listen.len(), 1);
        assert_eq!(
            config.limits.max_body_bytes,
            super::Limits::default().max_body_bytes
        );
        assert_eq!(
            config.limits.idle_timeout,
            super::Limits::default().idle_timeout
        );
    }
}
