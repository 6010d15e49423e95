//! The controller's configuration (`/etc/applianced/controller.toml`), as the controller
//! spec lays it out: listeners each with an address, a zone and a client-CA setting; the
//! store; the CA; appliance lifetimes; the compute backend. Every key is documented in
//! `packaging/controller.toml`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, HumanDuration, Problem};

pub const DEFAULT_PATH: &str = "/etc/applianced/controller.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub database: Database,
    /// Where the controller listens; at least one `admin` listener.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub pki: PkiSection,
    #[serde(default)]
    pub appliances: Appliances,
    /// The compute backend, when there is one (`[backend]`).
    #[serde(default)]
    pub backend: Backend,
    /// Several compute backends (`[[backends]]`, each with a `name`); when given,
    /// `[backend]` is not used. The first is the default one.
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub tasks: Tasks,
    #[serde(default)]
    pub webhooks: Webhooks,
    #[serde(default)]
    pub teams: Teams,
    /// Where appliances are placed; none: one region, `local`, holding
    /// `backend.max_appliances`.
    #[serde(default)]
    pub regions: Vec<RegionConfig>,
    /// The process backend's flavors: limits it enforces on an appliance's processes;
    /// none: one flavor, `default`, with no limits beyond the host's.
    #[serde(default)]
    pub flavors: Vec<FlavorConfig>,
    /// Templates: a flavor (and optionally an image, a network and a region) under a
    /// name; none: one template named after the backend, of the first of each.
    #[serde(default)]
    pub templates: Vec<TemplateConfig>,
    #[serde(default)]
    pub prices: Prices,
    /// The SMTP server notifications are mailed through; none: `notify_email` is refused.
    #[serde(default)]
    pub smtp: Option<Smtp>,
}

/// How the controller talks to its SMTP server.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (port 25 by default): for a relay on the same host or network only.
    None,
    /// STARTTLS, required (port 587 by default).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465 by default).
    Tls,
}

/// The SMTP server notifications go through.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub host: String,
    /// Default: by `tls`, 25, 587 or 465.
    pub port: Option<u16>,
    /// The sender, `Name <address>` or `address`.
    pub from: String,
    #[serde(default)]
    pub tls: SmtpTls,
    /// Authentication (with `password_file`); none: no authentication.
    pub username: Option<String>,
    /// A file holding the password (its first line).
    pub password_file: Option<PathBuf>,
    /// A CA to trust for the server's certificate besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Attempts at a mail before it is given up as failed.
    #[serde(default = "default_mail_attempts")]
    pub max_attempts: u32,
    /// Time one attempt may take.
    #[serde(default = "default_mail_timeout")]
    pub timeout: HumanDuration,
}

/// Attempts at a mail when `[smtp]` does not say.
pub const DEFAULT_MAIL_ATTEMPTS: u32 = 10;

fn default_mail_attempts() -> u32 {
    DEFAULT_MAIL_ATTEMPTS
}

fn default_mail_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

impl Smtp {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }
}

/// The price list invoices are made with: per appliance-minute of a template and of a
/// flavor, in minor units (cents) of one currency.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Prices {
    /// An ISO 4217 code; default `XXX` (no currency: no prices configured).
    pub currency: String,
    pub templates: std::collections::BTreeMap<String, u32>,
    pub flavors: std::collections::BTreeMap<String, u32>,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            currency: "XXX".into(),
            templates: Default::default(),
            flavors: Default::default(),
        }
    }
}

/// A region: placement fills the one with the lowest `priority` that has room.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    /// The backend that serves it (by name). Default: the first.
    pub backend: Option<String>,
    /// Lower first: 1 is placed before 2.
    #[serde(default)]
    pub priority: u32,
    /// Appliances (not deleted) the region holds at most.
    pub capacity: u32,
}

/// A flavor of the process backend: per-process limits on the appliance's agent and the
/// daemons it runs (inherited), set with `prlimit` and `nice` when it starts.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlavorConfig {
    pub name: String,
    /// Memory each process may allocate (RLIMIT_DATA), in MiB.
    pub memory_mb: Option<u32>,
    /// Descriptors each process may hold open (RLIMIT_NOFILE).
    pub open_files: Option<u32>,
    /// CPU scheduling niceness, 0 (as the controller) to 19 (yields to everything).
    pub cpu_nice: Option<u8>,
}

/// A template: what an appliance is made of, under one name.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub name: String,
    /// The backend that makes it (by name). Default: its region's, else the first.
    pub backend: Option<String>,
    pub flavor: String,
    /// Default: the backend's first image.
    pub image: Option<String>,
    /// Default: the backend's first network.
    pub network: Option<String>,
    /// Default: placement chooses.
    pub region: Option<String>,
}

/// Teams: who may create them, and the quotas a new team starts with (absent:
/// unlimited; admins change a team's quotas afterwards).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Teams {
    /// Whether users who are not admins may create teams (becoming their owners).
    /// Off by default: each team has its own quotas, so a member who could create
    /// teams could multiply them.
    pub members_may_create: bool,
    /// Live appliances a new team may have.
    pub max_appliances: Option<u32>,
    /// Appliance-minutes a new team may use per calendar month.
    pub max_appliance_minutes: Option<u32>,
    /// Key pairs a new team may hold.
    pub max_keypairs: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tasks {
    /// Tasks run at the same time by this controller.
    pub workers: u32,
    /// Attempts at an agent call before the task fails with a 502 problem.
    pub agent_attempts: u32,
    /// Time one agent call may take.
    pub agent_timeout: HumanDuration,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            workers: 4,
            agent_attempts: 3,
            agent_timeout: HumanDuration::secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// HMAC-SHA256 key signing deliveries; created (random, 0600) when missing.
    /// Default: `STATE_DIR/webhook.secret`.
    pub secret_file: Option<PathBuf>,
    /// Attempts before a delivery is given up as failed.
    pub max_attempts: u32,
    /// Time one delivery attempt may take.
    pub timeout: HumanDuration,
    /// Hosts a `callback_url` may name: a host name or address, or `*.domain` for the
    /// names under a domain. Empty: any host.
    pub allowed_hosts: Vec<String>,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            secret_file: None,
            max_attempts: 10,
            timeout: HumanDuration::secs(10),
            allowed_hosts: Vec::new(),
        }
    }
}

impl Webhooks {
    /// Whether deliveries may go to `host` (as a URL gives it: IPv6 in brackets).
    pub fn allows(&self, host: &str) -> bool {
        if self.allowed_hosts.is_empty() {
            return true;
        }
        let host = crate::transport::client::bare_host(host)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.allowed_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match allowed.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == allowed,
            }
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    /// Operators: bearer tokens, optionally client certificates.
    Admin,
    /// Integrations: client certificates mapped to service accounts.
    Api,
    /// Callbacks from appliances, with their own certificates.
    Appliance,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: SocketAddr,
    pub zone: Zone,
    /// Server certificate chain and key of this listener (HTTPS always). Both absent:
    /// the controller issues one from its own CA for the listener's address.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// CA bundle client certificates must chain to; required for `api`. For `appliance`
    /// the default is the controller's own CA, with its CRL.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With a `client_ca`: whether every client must present a certificate
    /// (`required`, the default) or may instead rely on a bearer token alone
    /// (`optional`, the `admin` zone only). A presented certificate is always verified.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// `sqlite:///path/to/file.db` (embedded, the default) or `postgres://...`.
    pub url: String,
    pub max_connections: u32,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "sqlite:///var/lib/applianced/controller.db".into(),
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiSection {
    /// The controller's CA directory (`applianced pki init` layout); created if missing.
    pub dir: Option<PathBuf>,
    /// Lifetime of the certificates issued to appliances.
    pub certificate_days: u32,
    /// Rotate an appliance's certificate this many days before it expires.
    pub rotate_before_days: u32,
}

impl Default for PkiSection {
    fn default() -> Self {
        PkiSection {
            dir: None,
            certificate_days: 30,
            rotate_before_days: 14,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Appliances {
    pub ttl_min_minutes: u32,
    pub ttl_max_minutes: u32,
    /// An appliance that has not called `launched` by then is `launch_timeout`.
    pub launch_timeout: HumanDuration,
    pub heartbeat_interval: HumanDuration,
    /// Missed heartbeats before an appliance is `unhealthy`.
    pub missed_heartbeats: u32,
    /// A `stopping` appliance not confirmed stopped by then is `stop_unconfirmed`.
    pub stop_timeout: HumanDuration,
}

impl Default for Appliances {
    fn default() -> Self {
        Appliances {
            ttl_min_minutes: 15,
            ttl_max_minutes: 235,
            launch_timeout: HumanDuration::secs(600),
            heartbeat_interval: HumanDuration::secs(30),
            missed_heartbeats: 3,
            stop_timeout: HumanDuration::secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Each appliance is an `applianced agent` process on its own loopback address.
    #[default]
    Process,
    /// The same, each appliance in its own network namespace, joined to a bridge the
    /// controller manages by a veth pair, with its own address from `subnet` (root).
    Netns,
    /// Each appliance is an instance of an EC2-compatible cloud that joins by
    /// enrolment.
    Ec2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backend {
    /// Its name in `[[backends]]` (templates, regions and creates name it). Default,
    /// and for `[backend]`: its kind.
    pub name: Option<String>,
    pub kind: BackendKind,
    /// First loopback address handed to `process` appliances (then the next ones).
    pub first_address: IpAddr,
    pub max_appliances: u32,
    /// Port each appliance's agent listens on. Default: 9443 (`process`), 443 (`netns`).
    pub agent_port: Option<u16>,
    /// `netns`: the bridge the appliances' namespaces are joined to (created if
    /// missing), at most 9 characters (its ports are named `BRIDGE.SLOT`).
    pub bridge: Option<String>,
    /// `netns`: the appliances' IPv4 subnet, `NETWORK/PREFIX` (/16 to /29): the bridge
    /// takes its first address, slot N the address after it plus N. `ec2`: the subnet
    /// id instances are made in (default: the cloud's default subnet).
    pub subnet: Option<String>,
    /// `ec2`: the API's URL. Default: `https://ec2.REGION.amazonaws.com`.
    pub endpoint: Option<String>,
    /// `ec2`: the cloud's region (signs every call).
    pub region: Option<String>,
    /// `ec2`: the image (AMI id) instances are made from by default; it must start the
    /// user data (cloud-init) and have `applianced` (or get it from `agent_install`).
    pub image: Option<String>,
    /// `ec2`: the instance type by default.
    pub instance_type: Option<String>,
    /// `ec2`: more images, instance types and subnets appliances may choose (the
    /// catalogue's images, flavors and networks).
    pub images: Vec<String>,
    pub instance_types: Vec<String>,
    pub subnets: Vec<String>,
    /// `ec2`: security group ids of every instance.
    pub security_groups: Vec<String>,
    /// `ec2`: shell lines the user data runs before the enrolment command.
    pub agent_install: Option<String>,
    /// `ec2`: the credentials' profile (of `credentials_file`, or of `~/.aws/`);
    /// configured, it wins over the environment's keys. Default: `AWS_PROFILE`, else
    /// `default`.
    pub profile: Option<String>,
    /// `ec2`: the credentials file (AWS's INI format), which must hold the profile: a
    /// service has no home directory. It wins over the environment.
    pub credentials_file: Option<PathBuf>,
    /// `ec2`: a CA bundle for the endpoint's certificate (default: the system's).
    pub endpoint_ca: Option<PathBuf>,
    /// The agent program. Default: this program.
    pub agent_binary: Option<PathBuf>,
    /// URL appliances post their callbacks to. Default: the first `appliance` listener.
    pub controller_url: Option<String>,
    /// CA bundle appliances verify that listener with. Default: the controller's CA.
    pub controller_ca: Option<PathBuf>,
    /// When the controller runs as root: each `process` appliance (its agent and
    /// daemons) runs as its own unprivileged user and group, `appliance_id_first + slot`.
    pub isolate_appliances: bool,
    pub appliance_id_first: u32,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            name: None,
            kind: BackendKind::Process,
            first_address: IpAddr::from([127, 0, 1, 1]),
            max_appliances: 250,
            agent_port: None,
            bridge: None,
            subnet: None,
            endpoint: None,
            region: None,
            image: None,
            instance_type: None,
            images: Vec::new(),
            instance_types: Vec::new(),
            subnets: Vec::new(),
            security_groups: Vec::new(),
            agent_install: None,
            profile: None,
            credentials_file: None,
            endpoint_ca: None,
            agent_binary: None,
            controller_url: None,
            controller_ca: None,
            isolate_appliances: true,
            appliance_id_first: APPLIANCE_ID_FIRST,
        }
    }
}

impl Backend {
    /// Its name: the configured one, else its kind's.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            match self.kind {
                BackendKind::Process => "process",
                BackendKind::Netns => "netns",
                BackendKind::Ec2 => "ec2",
            }
            .to_string()
        })
    }

    /// The port appliances' agents listen on.
    pub fn agent_port(&self) -> u16 {
        self.agent_port.unwrap_or(match self.kind {
            BackendKind::Process => 9443,
            BackendKind::Netns | BackendKind::Ec2 => 443,
        })
    }

    /// `ec2`: the endpoint's URL.
    pub fn ec2_endpoint(&self) -> Option<String> {
        (self.kind == BackendKind::Ec2).then(|| {
            self.endpoint.clone().unwrap_or_else(|| {
                format!(
                    "https://ec2.{}.amazonaws.com/",
                    self.region.as_deref().unwrap_or("us-east-1")
                )
            })
        })
    }

    /// `ec2`: the images, instance types and subnets, the defaults first.
    pub fn ec2_catalogue(&self) -> [Vec<String>; 3] {
        let with = |first: &Option<String>, more: &[String]| {
            let mut all: Vec<String> = first.iter().cloned().collect();
            for m in more {
                if !all.contains(m) {
                    all.push(m.clone());
                }
            }
            all
        };
        let subnet = self
            .subnet
            .clone()
            .filter(|_| self.kind == BackendKind::Ec2);
        [
            with(&self.image, &self.images),
            with(&self.instance_type, &self.instance_types),
            with(&subnet, &self.subnets),
        ]
    }

    /// Whether its appliances hold slots (user ids, addresses): `ec2` instances do not.
    pub fn has_slots(&self) -> bool {
        self.kind != BackendKind::Ec2
    }

    /// `netns`: the bridge and the subnet (network address and prefix length), once
    /// validated.
    pub fn netns(&self) -> Option<(String, std::net::Ipv4Addr, u8)> {
        if self.kind != BackendKind::Netns {
            return None;
        }
        let (network, prefix) = parse_subnet(self.subnet.as_deref()?).ok()?;
        Some((self.bridge.clone()?, network, prefix))
    }
}

/// An `https://` URL with a host, of letters, digits and `.-_~:/[]%` only.
fn is_plain_https_url(url: &str) -> bool {
    url.bytes()
        .all(|c| c.is_ascii_alphanumeric() || b".-_~:/[]%".contains(&c))
        && url.parse::<http::Uri>().is_ok_and(|u| {
            u.scheme_str() == Some("https") && u.host().is_some_and(|h| !h.is_empty())
        })
}

/// `NETWORK/PREFIX`, IPv4, /16 to /29, the network address itself.
pub fn parse_subnet(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected NETWORK/PREFIX"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?}: not an IPv4 network"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (16..=29).contains(p))
        .ok_or_else(|| format!("{s:?}: the prefix length must be 16 to 29"))?;
    let mask = u32::MAX << (32 - prefix);
    if u32::from(ip) & !mask != 0 {
        return Err(format!("{s:?}: not the network's address"));
    }
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{s:?}: a private unicast network"));
    }
    Ok((ip, prefix))
}

/// The first id of `process` appliances' users and groups: 0x71000000, beside the
/// agent's own range for instances' daemons (0x70000000) and above what Debian, systemd
/// and container engines allocate.
pub const APPLIANCE_ID_FIRST: u32 = 0x7100_0000;

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/applianced")
}

impl ControllerConfig {
    /// The compute backends, the default one first: `[[backends]]`, else `[backend]`.
    pub fn backend_list(&self) -> &[Backend] {
        if self.backends.is_empty() {
            std::slice::from_ref(&self.backend)
        } else {
            &self.backends
        }
    }

    pub fn load(path: &Path) -> Result<ControllerConfig, ConfigError> {
        let config: ControllerConfig = super::read_toml(path)?;
        config.validate().map_err(|problems| ConfigError {
            file: Some(path.display().to_string()),
            problems,
        })?;
        Ok(config)
    }

    /// Every problem of the configuration, each with its key.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });
        if self.listeners.is_empty() {
            problem(
                "listeners".into(),
                "at least one listener is required".into(),
            );
        }
        if !self.listeners.iter().any(|l| l.zone == Zone::Admin) {
            problem("listeners".into(), "an admin listener is required".into());
        }
        let mut addresses = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |k: &str| format!("listeners[{i}].{k}");
            if !addresses.insert(l.address) {
                problem(
                    key("address"),
                    format!("{} is used by another listener", l.address),
                );
            }
            if l.cert.is_some() != l.key.is_some() {
                problem(
                    key("cert"),
                    "give both cert and key, or neither (the controller issues one)".into(),
                );
            }
            for (k, p) in [
                ("cert", l.cert.as_ref()),
                ("key", l.key.as_ref()),
                ("client_ca", l.client_ca.as_ref()),
            ] {
                if let Some(p) = p
                    && let Err(e) = std::fs::metadata(p)
                {
                    problem(key(k), format!("{}: {e}", p.display()));
                }
            }
            if l.client_auth == ClientAuth::Optional {
                if l.zone != Zone::Admin {
                    problem(
                        key("client_auth"),
                        "\"optional\" is for the admin zone only; the others always require a certificate"
                            .into(),
                    );
                } else if l.client_ca.is_none() {
                    problem(
                        key("client_auth"),
                        "\"optional\" needs a client_ca to verify the certificates presented"
                            .into(),
                    );
                }
            }
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            problem(
                "database.url".into(),
                format!("{url:?}: expected sqlite:... or postgres://..."),
            );
        }
        if self.database.max_connections == 0 {
            problem(
                "database.max_connections".into(),
                "must be at least 1".into(),
            );
        }
        let a = &self.appliances;
        if a.ttl_min_minutes == 0 || a.ttl_min_minutes > a.ttl_max_minutes {
            problem(
                "appliances.ttl_min_minutes".into(),
                format!(
                    "{}..{} is not a range of minutes",
                    a.ttl_min_minutes, a.ttl_max_minutes
                ),
            );
        }
        for (k, d) in [
            ("appliances.launch_timeout", a.launch_timeout),
            ("appliances.heartbeat_interval", a.heartbeat_interval),
        ] {
            if d.0.is_zero() {
                problem(k.into(), "must be greater than zero".into());
            }
        }
        if a.stop_timeout.0.is_zero() {
            problem(
                "appliances.stop_timeout".into(),
                "must be greater than zero".into(),
            );
        }
        if self.tasks.workers == 0 || self.tasks.agent_attempts == 0 {
            problem(
                "tasks.workers".into(),
                "workers and agent_attempts must be at least 1".into(),
            );
        }
        for (i, h) in self.webhooks.allowed_hosts.iter().enumerate() {
            let name = h.strip_prefix("*.").unwrap_or(h);
            if name.is_empty()
                || name.contains('*')
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || "/@?#".contains(c))
            {
                problem(
                    format!("webhooks.allowed_hosts[{i}]"),
                    format!("{h:?}: a host name or address, or *.domain"),
                );
            }
        }
        if self.webhooks.max_attempts == 0 {
            problem("webhooks.max_attempts".into(), "must be at least 1".into());
        }
        let backends = self.backend_list();
        let prefix = |i: usize| {
            if self.backends.is_empty() {
                "backend".to_string()
            } else {
                format!("backends[{i}]")
            }
        };
        let has_appliance_listener = self.listeners.iter().any(|l| l.zone == Zone::Appliance);
        let loopback_listener = self
            .listeners
            .iter()
            .find(|l| l.zone == Zone::Appliance)
            .is_some_and(|l| l.address.ip().is_loopback());
        let mut seen_names = HashSet::new();
        let mut seen_bridges = HashSet::new();
        for (i, b) in backends.iter().enumerate() {
            let key = |k: &str| format!("{}.{k}", prefix(i));
            let name = b.name();
            if !self.backends.is_empty() && b.name.is_none() {
                problem(key("name"), "each of [[backends]] needs a name".into());
            } else if !crate::controller::auth::is_plain_name(&name) || name == "enrolled" {
                problem(
                    key("name"),
                    format!("{name:?}: 1 to 64 letters, digits, '.', '_' or '-', not \"enrolled\""),
                );
            } else if !seen_names.insert(name.clone()) {
                problem(key("name"), format!("{name:?} is used twice"));
            }
            // It is written into agents' configurations and into the shell script an
            // ec2 instance runs: a plain https URL, nothing a shell would interpret.
            if let Some(url) = &b.controller_url
                && !is_plain_https_url(url)
            {
                problem(
                    key("controller_url"),
                    format!("{url:?}: expected https://HOST[:PORT][/PATH]"),
                );
            }
            if !has_appliance_listener && b.controller_url.is_none() {
                problem(
                    "listeners".into(),
                    format!(
                        "appliances need an appliance listener (or {})",
                        key("controller_url")
                    ),
                );
            }
            if b.max_appliances == 0 {
                problem(key("max_appliances"), "must be at least 1".into());
            }
            if b.kind == BackendKind::Netns {
                match b.bridge.as_deref() {
                    None => problem(
                        key("bridge"),
                        "the netns backend needs a bridge name".into(),
                    ),
                    Some(bridge)
                        if bridge.is_empty()
                            || bridge.len() > 9
                            || !bridge
                                .bytes()
                                .all(|c| c.is_ascii_alphanumeric() || c == b'-') =>
                    {
                        problem(
                            key("bridge"),
                            format!("{bridge:?}: 1 to 9 letters, digits or '-'"),
                        )
                    }
                    Some(bridge) if !seen_bridges.insert(bridge.to_string()) => {
                        problem(key("bridge"), format!("{bridge:?} is used twice"))
                    }
                    Some(_) => {}
                }
                match b.subnet.as_deref().map(parse_subnet) {
                    None => problem(key("subnet"), "the netns backend needs a subnet".into()),
                    Some(Err(e)) => problem(key("subnet"), e),
                    Some(Ok((_, prefix))) => {
                        let hosts = (1u64 << (32 - prefix)) - 3;
                        if u64::from(b.max_appliances) > hosts {
                            problem(
                                key("max_appliances"),
                                format!(
                                    "{}: the subnet has addresses for {hosts} appliances",
                                    b.max_appliances
                                ),
                            );
                        }
                    }
                }
                if b.controller_url.is_none() && loopback_listener {
                    problem(
                        key("controller_url"),
                        "appliances in namespaces cannot reach a loopback appliance listener: listen \
                         on the bridge's address (the subnet's first) or 0.0.0.0, or set controller_url"
                            .into(),
                    );
                }
            } else if b.kind == BackendKind::Ec2 {
                let ec2_id = |v: &str, prefix: &str| {
                    v.strip_prefix(prefix).is_some_and(|rest| {
                        !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_alphanumeric())
                    })
                };
                match b.region.as_deref() {
                    None => problem(key("region"), "the ec2 backend needs a region".into()),
                    Some(r)
                        if r.is_empty()
                            || r.len() > 32
                            || !r.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') =>
                    {
                        problem(key("region"), format!("{r:?}: not a region name"))
                    }
                    Some(_) => {}
                }
                if let Some(e) = &b.endpoint {
                    let ok = e
                        .parse::<http::Uri>()
                        .ok()
                        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
                        .is_some_and(|u| u.host().is_some());
                    if !ok {
                        problem(
                            key("endpoint"),
                            format!("{e:?}: expected http(s)://HOST[:PORT]/"),
                        );
                    }
                }
                let [images, types, subnets] = b.ec2_catalogue();
                if images.is_empty() {
                    problem(
                        key("image"),
                        "the ec2 backend needs an image (an AMI id)".into(),
                    );
                }
                if types.is_empty() {
                    problem(
                        key("instance_type"),
                        "the ec2 backend needs an instance_type".into(),
                    );
                }
                for i in &images {
                    if !ec2_id(i, "ami-") {
                        problem(key("images"), format!("{i:?}: not an image id (ami-...)"));
                    }
                }
                for t in &types {
                    if t.is_empty()
                        || t.len() > 64
                        || !t
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
                    {
                        problem(
                            key("instance_types"),
                            format!("{t:?}: not an instance type"),
                        );
                    }
                }
                for n in &subnets {
                    if !ec2_id(n, "subnet-") {
                        problem(
                            key("subnets"),
                            format!("{n:?}: not a subnet id (subnet-...)"),
                        );
                    }
                }
                for g in &b.security_groups {
                    if !ec2_id(g, "sg-") {
                        problem(
                            key("security_groups"),
                            format!("{g:?}: not a security group id (sg-...)"),
                        );
                    }
                }
                if b.controller_url.is_none() {
                    problem(
                        key("controller_url"),
                        "the ec2 backend needs controller_url: the https URL its instances \
                         reach the controller's appliance listener by"
                            .into(),
                    );
                }
                if b.agent_install.as_deref().is_some_and(|s| s.len() > 8192) {
                    problem(
                        key("agent_install"),
                        "at most 8 KiB (the user data is limited to 16 KiB)".into(),
                    );
                }
            } else if !b.first_address.is_loopback() {
                problem(
                    key("first_address"),
                    format!(
                        "{}: the process backend uses loopback addresses",
                        b.first_address
                    ),
                );
            }
        }
        if a.missed_heartbeats == 0 {
            problem(
                "appliances.missed_heartbeats".into(),
                "must be at least 1".into(),
            );
        }
        let p = &self.pki;
        if p.certificate_days == 0 || p.rotate_before_days >= p.certificate_days {
            problem(
                "pki.rotate_before_days".into(),
                format!(
                    "{} must be below pki.certificate_days ({})",
                    p.rotate_before_days, p.certificate_days
                ),
            );
        }
        // Appliances' user ids: one per slot of every backend, from the first's.
        let first = &backends[0];
        let slots: u64 = backends
            .iter()
            .filter(|b| b.has_slots())
            .map(|b| u64::from(b.max_appliances))
            .sum();
        let last = u64::from(first.appliance_id_first) + slots;
        if first.appliance_id_first < 1000 || last > 0x8000_0000 {
            problem(
                format!("{}.appliance_id_first", prefix(0)),
                format!(
                    "{}: appliances' ids (one per slot, max_appliances of them) must lie between 1000 and 2147483648",
                    first.appliance_id_first
                ),
            );
        }
        // One user-id range and one isolation rule for all backends' appliances.
        for (i, b) in backends.iter().enumerate().skip(1) {
            if b.isolate_appliances != first.isolate_appliances
                || b.appliance_id_first != first.appliance_id_first
            {
                problem(
                    format!("{}.isolate_appliances", prefix(i)),
                    "isolate_appliances and appliance_id_first are the first backend's for all: \
                     give every backend the same (or leave them out)"
                        .into(),
                );
            }
        }
        // No two backends hand out the same addresses.
        let ranges: Vec<(usize, u128, u128)> = backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let (start, len) = match b.netns() {
                    Some((_, network, prefix)) => {
                        (u128::from(u32::from(network)), 1u128 << (32 - prefix))
                    }
                    None if b.kind != BackendKind::Process => return None,
                    None => {
                        let start = match b.first_address {
                            IpAddr::V4(v4) => u128::from(u32::from(v4)),
                            IpAddr::V6(v6) => u128::from(v6) ^ (1u128 << 127),
                        };
                        (start, u128::from(b.max_appliances))
                    }
                };
                Some((i, start, start + len))
            })
            .collect();
        for (n, (i, a_start, a_end)) in ranges.iter().enumerate() {
            for (j, b_start, b_end) in &ranges[n + 1..] {
                if a_start < b_end && b_start < a_end {
                    problem(
                        prefix(*j),
                        format!("its appliances' addresses overlap those of {}", prefix(*i)),
                    );
                }
            }
        }
        let backend_names: Vec<String> = backends.iter().map(Backend::name).collect();
        // A backend no region names gets a region of its own name: it must not be
        // another's.
        for b in &backend_names {
            let named = self
                .regions
                .iter()
                .any(|r| r.backend.as_ref().unwrap_or(&backend_names[0]) == b);
            if !named && self.regions.iter().any(|r| &r.name == b) && !self.regions.is_empty() {
                problem(
                    "regions".into(),
                    format!(
                        "backend {b:?} has no region, so it gets one of its name, but a region of \
                         another backend is called so"
                    ),
                );
            }
        }
        for (i, r) in self.regions.iter().enumerate() {
            if let Some(b) = &r.backend
                && !backend_names.contains(b)
            {
                problem(
                    format!("regions[{i}].backend"),
                    format!("{b:?} is not a backend ({})", backend_names.join(", ")),
                );
            }
        }
        for (i, t) in self.templates.iter().enumerate() {
            if let Some(b) = &t.backend
                && !backend_names.contains(b)
            {
                problem(
                    format!("templates[{i}].backend"),
                    format!("{b:?} is not a backend ({})", backend_names.join(", ")),
                );
            }
        }
        let mut names = |what: &str, list: Vec<&String>| {
            let mut seen = HashSet::new();
            for (i, name) in list.into_iter().enumerate() {
                if !crate::controller::auth::is_plain_name(name) {
                    problem(
                        format!("{what}[{i}].name"),
                        "1 to 64 letters, digits, '.', '_' or '-'".into(),
                    );
                } else if !seen.insert(name.clone()) {
                    problem(
                        format!("{what}[{i}].name"),
                        format!("{name:?} is used twice"),
                    );
                }
            }
        };
        names("regions", self.regions.iter().map(|r| &r.name).collect());
        names("flavors", self.flavors.iter().map(|f| &f.name).collect());
        names(
            "templates",
            self.templates.iter().map(|t| &t.name).collect(),
        );
        for (i, b) in backends.iter().enumerate() {
            let name = b.name();
            let capacity: u64 = self
                .regions
                .iter()
                .filter(|r| r.backend.as_ref().unwrap_or(&backend_names[0]) == &name)
                .map(|r| u64::from(r.capacity))
                .sum();
            if capacity > u64::from(b.max_appliances) {
                problem(
                    "regions".into(),
                    format!(
                        "the regions of {name} hold {capacity} appliances, more than {}.max_appliances ({})",
                        prefix(i),
                        b.max_appliances
                    ),
                );
            }
        }
        for (i, f) in self.flavors.iter().enumerate() {
            if f.cpu_nice.is_some_and(|n| n > 19) {
                problem(format!("flavors[{i}].cpu_nice"), "0 to 19".into());
            }
            if f.memory_mb.is_some_and(|m| m < 64) {
                problem(format!("flavors[{i}].memory_mb"), "at least 64".into());
            }
            if f.open_files.is_some_and(|n| n < 256) {
                problem(format!("flavors[{i}].open_files"), "at least 256".into());
            }
        }
        let flavor_names: Vec<&str> = if self.flavors.is_empty() {
            vec!["default"]
        } else {
            self.flavors.iter().map(|f| f.name.as_str()).collect()
        };
        for (i, t) in self.templates.iter().enumerate() {
            if !flavor_names.contains(&t.flavor.as_str()) {
                problem(
                    format!("templates[{i}].flavor"),
                    format!(
                        "{:?} is not a flavor ({})",
                        t.flavor,
                        flavor_names.join(", ")
                    ),
                );
            }
            if let Some(r) = &t.region
                && !self.regions.iter().any(|known| &known.name == r)
            {
                problem(
                    format!("templates[{i}].region"),
                    format!("{r:?} is not in [[regions]]"),
                );
            }
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.is_empty() {
                problem("smtp.host".into(), "required".into());
            }
            if smtp.from.parse::<lettre::message::Mailbox>().is_err() {
                problem(
                    "smtp.from".into(),
                    format!("{:?}: an address, or a name and <address>", smtp.from),
                );
            }
            if smtp.username.is_some() != smtp.password_file.is_some() {
                problem(
                    "smtp.password_file".into(),
                    "give both username and password_file, or neither".into(),
                );
            }
            for (k, p) in [
                ("password_file", smtp.password_file.as_ref()),
                ("ca_file", smtp.ca_file.as_ref()),
            ] {
                if let Some(p) = p
                    && let Err(e) = std::fs::metadata(p)
                {
                    problem(format!("smtp.{k}"), format!("{}: {e}", p.display()));
                }
            }
            if smtp.username.is_some() && smtp.tls == SmtpTls::None {
                problem(
                    "smtp.tls".into(),
                    "authentication needs \"starttls\" or \"tls\": the password would cross in clear".into(),
                );
            }
            if smtp.max_attempts == 0 {
                problem("smtp.max_attempts".into(), "at least 1".into());
            }
        }
        let currency = &self.prices.currency;
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            problem(
                "prices.currency".into(),
                format!("{currency:?}: an ISO 4217 code, three capital letters"),
            );
        }
        if !self.state_dir.is_absolute() {
            problem(
                "state_dir".into(),
                format!("{}: must be an absolute path", self.state_dir.display()),
            );
        }
        if let Some(level) = &self.log_level
            && tracing_subscriber::EnvFilter::try_new(level).is_err()
        {
            problem(
                "log_level".into(),
                format!("{level:?} is not a log level or filter"),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Loads every listener's certificate, key and client CA, naming the listener.
    pub fn check_tls(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let (Some(cert), Some(key)) = (&l.cert, &l.key) else {
                continue;
            };
            let loaded = crate::certs::load_certs(cert).and_then(|chain| {
                let key_der = crate::certs::load_key(key)?;
                crate::certs::certified_key(chain, key_der)
                    .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))
            });
            if let Err(e) = loaded {
                problems.push(Problem {
                    key: format!("listeners[{i}].cert"),
                    message: e,
                });
            }
            if let Some(ca) = &l.client_ca
                && let Err(e) = crate::certs::load_certs(ca)
            {
                problems.push(Problem {
                    key: format!("listeners[{i}].client_ca"),
                    message: e,
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaging_example_parses_and_names_every_problem() {
        let text = include_str!("../../packaging/controller.toml");
        let config: ControllerConfig = super::super::parse_toml(text).unwrap();
        assert_eq!(config.listeners.len(), 2);
        assert_eq!(config.appliances.ttl_max_minutes, 235);

        let bad: ControllerConfig = super::super::parse_toml(
            "[database]\nurl = \"mysql://x\"\n[[listeners]]\naddress = \"127.0.0.1:1\"\nzone = \"api\"\ncert = \"/nonexistent\"\nkey = \"/nonexistent\"\n[appliances]\nttl_min_minutes = 300\n",
        )
        .unwrap();
        let keys: Vec<String> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        for k in [
            "listeners",
            "listeners[0].cert",
            "database.url",
            "appliances.ttl_min_minutes",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        let (key, _) =
            super::super::parse_toml::<ControllerConfig>("[[listeners]]\nadress = \"x\"\n")
                .unwrap_err();
        assert!(key.starts_with("listeners"), "{key}");
    }

    #[test]
    fn regions_flavors_and_templates_are_checked() {
        let bad: ControllerConfig = super::super::parse_toml(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\nzone = \"admin\"\n\
             [[regions]]\nname = \"a\"\ncapacity = 1\n[[regions]]\nname = \"a\"\ncapacity = 2\n\
             [[flavors]]\nname = \"s m\"\ncpu_nice = 20\nmemory_mb = 1\nopen_files = 10\n\
             [[templates]]\nname = \"t\"\nflavor = \"huge\"\nregion = \"mars\"\n",
        )
        .unwrap();
        let keys: Vec<String> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .filter(|k| k != "listeners")
            .collect();
        assert_eq!(
            keys,
            [
                "regions[1].name",
                "flavors[0].name",
                "flavors[0].cpu_nice",
                "flavors[0].memory_mb",
                "flavors[0].open_files",
                "templates[0].flavor",
                "templates[0].region",
            ]
        );
    }

    #[test]
    fn callback_hosts_match_exactly_or_under_a_domain() {
        let any = Webhooks::default();
        assert!(any.allows("anything.example") && any.allows("127.0.0.1"));
        let some = Webhooks {
            allowed_hosts: vec![
                "hooks.example".into(),
                "*.Corp.Example".into(),
                "::1".into(),
            ],
            ..Webhooks::default()
        };
        for host in [
            "hooks.example",
            "HOOKS.example.",
            "a.corp.example",
            "b.a.corp.example",
            "[::1]",
        ] {
            assert!(some.allows(host), "{host}");
        }
        for host in [
            "corp.example",
            "xcorp.example",
            "hooks.example.evil",
            "evilhooks.example",
            "127.0.0.1",
            "[::2]",
            "",
        ] {
            assert!(!some.allows(host), "{host}");
        }
    }

    #[test]
    fn optional_client_certificates_only_on_an_admin_zone_with_a_ca() {
        let ca = std::env::temp_dir();
        let config = |zone: &str, client_ca: bool| -> ControllerConfig {
            let ca_line = if client_ca {
                format!("client_ca = \"{}\"\n", ca.display())
            } else {
                String::new()
            };
            super::super::parse_toml(&format!(
                "[[listeners]]\naddress = \"127.0.0.1:1\"\nzone = \"appliance\"\n\
                 [[listeners]]\naddress = \"127.0.0.1:2\"\nzone = \"{zone}\"\n{ca_line}\
                 client_auth = \"optional\"\n"
            ))
            .unwrap()
        };
        let fine = config("admin", true).validate();
        assert!(fine.is_ok(), "{fine:?}");
        for (zone, client_ca) in [("admin", false), ("appliance", true), ("api", true)] {
            let problems = config(zone, client_ca).validate().unwrap_err();
            assert!(
                problems.iter().any(|p| p.key == "listeners[1].client_auth"),
                "{zone}: {problems:?}"
            );
        }
        let (key, _) = super::super::parse_toml::<ControllerConfig>(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\nzone = \"admin\"\nclient_auth = \"maybe\"\n",
        )
        .unwrap_err();
        assert!(key.contains("client_auth"), "{key}");
    }

    /// The keys of `[backend]` a configuration with this backend table and an
    /// appliance listener on `listener` has problems with.
    fn backend_problems(listener: &str, backend: &str) -> Vec<String> {
        let c: ControllerConfig = super::super::parse_toml(&format!(
            "[[listeners]]\naddress = \"{listener}\"\nzone = \"appliance\"\n[backend]\n{backend}"
        ))
        .unwrap();
        c.validate()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.key)
            .filter(|k| k.starts_with("backend."))
            .collect()
    }

    #[test]
    fn the_netns_backend_needs_a_bridge_a_subnet_and_a_reachable_listener() {
        let keys = |backend: &str, listener: &str| {
            backend_problems(listener, &format!("kind = \"netns\"\n{backend}"))
        };
        let good = "bridge = \"apl0\"\nsubnet = \"10.213.0.0/24\"\n";
        assert!(keys(good, "10.213.0.1:8444").is_empty());
        assert!(keys(good, "0.0.0.0:8444").is_empty());
        assert_eq!(keys(good, "127.0.0.1:8444"), ["backend.controller_url"]);
        assert_eq!(
            keys("subnet = \"10.213.0.0/24\"\n", "0.0.0.0:1"),
            ["backend.bridge"]
        );
        for subnet in [
            "10.213.0.1/24",
            "10.213.0.0/8",
            "127.0.0.0/24",
            "fd00::/64",
            "x",
        ] {
            assert_eq!(
                keys(
                    &format!("bridge = \"apl0\"\nsubnet = \"{subnet}\"\n"),
                    "0.0.0.0:1"
                ),
                ["backend.subnet"],
                "{subnet}"
            );
        }
        assert_eq!(
            keys(
                "bridge = \"much-too-long\"\nsubnet = \"10.213.0.0/24\"\n",
                "0.0.0.0:1"
            ),
            ["backend.bridge"]
        );
        assert_eq!(
            keys(
                "bridge = \"apl0\"\nsubnet = \"10.213.0.0/29\"\nmax_appliances = 6\n",
                "0.0.0.0:1"
            ),
            ["backend.max_appliances"]
        );
        let c: ControllerConfig =
            super::super::parse_toml(&format!("[backend]\nkind = \"netns\"\n{good}")).unwrap();
        assert_eq!(c.backend.agent_port(), 443);
        assert_eq!(Backend::default().agent_port(), 9443);
    }

    #[test]
    fn the_ec2_backend_needs_a_region_an_image_and_an_instance_type_of_valid_ids() {
        let keys = |backend: &str| {
            backend_problems("127.0.0.1:8444", &format!("kind = \"ec2\"\n{backend}"))
        };
        let good = "region = \"eu-west-1\"\nimage = \"ami-0abc\"\ninstance_type = \"t3.small\"\n\
                    controller_url = \"https://controller.example:8444\"\n";
        assert!(keys(good).is_empty(), "{:?}", keys(good));
        assert!(
            keys(&format!(
                "{good}subnet = \"subnet-1a\"\nsecurity_groups = [\"sg-1\"]\n\
                 endpoint = \"http://127.0.0.1:5000/\"\nimages = [\"ami-2\"]\n"
            ))
            .is_empty()
        );
        let url = "controller_url = \"https://controller.example:8444\"\n";
        assert_eq!(
            keys(&format!(
                "image = \"ami-1\"\ninstance_type = \"t3.small\"\n{url}"
            )),
            ["backend.region"]
        );
        assert_eq!(
            keys(&format!(
                "region = \"r\"\ninstance_type = \"t3.small\"\n{url}"
            )),
            ["backend.image"]
        );
        assert_eq!(
            keys(&format!("region = \"r\"\nimage = \"ami-1\"\n{url}")),
            ["backend.instance_type"]
        );
        // Instances must be told where the controller is.
        assert_eq!(
            keys("region = \"r\"\nimage = \"ami-1\"\ninstance_type = \"t3.small\"\n"),
            ["backend.controller_url"]
        );
        for (extra, key) in [
            ("images = [\"1234\"]", "backend.images"),
            ("subnet = \"10.0.0.0/24\"", "backend.subnets"),
            ("security_groups = [\"default\"]", "backend.security_groups"),
            ("endpoint = \"ftp://x\"", "backend.endpoint"),
            ("instance_types = [\"t3 small\"]", "backend.instance_types"),
            ("region = \"eu west\"", "backend.region"),
            (
                "controller_url = \"https://c.example:8444/$(reboot)\"",
                "backend.controller_url",
            ),
            (
                "controller_url = \"http://c.example\"",
                "backend.controller_url",
            ),
        ] {
            let text = if extra.starts_with("controller_url") {
                format!(
                    "region = \"r\"\nimage = \"ami-1\"\ninstance_type = \"t3.small\"\n{extra}\n"
                )
            } else if extra.starts_with("region") {
                format!("{extra}\nimage = \"ami-1\"\ninstance_type = \"t3.small\"\n{url}")
            } else {
                format!("{good}{extra}\n")
            };
            assert_eq!(keys(&text), [key], "{extra}");
        }
        let c: ControllerConfig = super::super::parse_toml(&format!(
            "[backend]\nkind = \"ec2\"\n{good}subnet = \"subnet-1\"\n\
             instance_types = [\"t3.small\", \"t3.large\"]\n"
        ))
        .unwrap();
        assert_eq!(c.backend.agent_port(), 443);
        assert!(!c.backend.has_slots());
        assert_eq!(
            c.backend.ec2_endpoint().as_deref(),
            Some("https://ec2.eu-west-1.amazonaws.com/")
        );
        assert_eq!(
            c.backend.ec2_catalogue(),
            [
                vec!["ami-0abc".to_string()],
                vec!["t3.small".to_string(), "t3.large".to_string()],
                vec!["subnet-1".to_string()],
            ]
        );
    }

    #[test]
    fn several_backends_must_not_overlap_or_disagree() {
        let keys = |text: &str| -> Vec<String> {
            let c: ControllerConfig = super::super::parse_toml(&format!(
                "[[listeners]]\naddress = \"0.0.0.0:8444\"\nzone = \"appliance\"\n{text}"
            ))
            .unwrap();
            let mut k: Vec<String> = c
                .validate()
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.key)
                .filter(|k| k.starts_with("backends") || k == "regions")
                .collect();
            k.dedup();
            k
        };
        let two = |second: &str| {
            format!(
                "[[backends]]\nname = \"a\"\nfirst_address = \"127.0.1.1\"\nmax_appliances = 10\n\
                 [[backends]]\nname = \"b\"\n{second}"
            )
        };
        assert!(keys(&two("first_address = \"127.0.2.1\"\n")).is_empty());
        assert_eq!(
            keys(&two("first_address = \"127.0.1.5\"\n")),
            ["backends[1]"]
        );
        assert_eq!(
            keys(&two(
                "first_address = \"127.0.2.1\"\nisolate_appliances = false\n"
            )),
            ["backends[1].isolate_appliances"]
        );
        assert_eq!(
            keys(
                &two("first_address = \"127.0.2.1\"\nname = \"a\"\n").replace("name = \"b\"\n", "")
            ),
            ["backends[1].name"]
        );
        // b has no region, so it gets one called "b": a's region must not be.
        assert_eq!(
            keys(
                &(two("first_address = \"127.0.2.1\"\n")
                    + "[[regions]]\nname = \"b\"\ncapacity = 1\n")
            ),
            ["regions"]
        );
    }
}
