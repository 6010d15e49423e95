//! `applianced controller`: the fleet side. Operators use the northbound API on `admin`
//! listeners ([`api`]); appliances call back on `appliance` listeners with
//! their own certificates. The [`fleet`] spawns appliances through the `process`
//! [`backend`], issues their certificates from the controller's [`ca`], drives their
//! agents over mutual TLS, and keeps their [`lifecycle`] in the [`store`] (SQLite or
//! PostgreSQL through one code path), with durable tasks, timers and webhooks.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::controller::{Backend, ClientAuth, ControllerConfig, Listener, Zone};
use crate::exit;
use crate::transport::TlsMaterial;
use crate::transport::client::Client;
use crate::transport::server::{Server, ServerLimits, TransportMetrics, bind, notify_ready};

pub mod accounts;
pub mod api;
pub mod auth;
pub mod backend;
pub mod ca;
pub mod clusters;
pub mod ec2;
pub mod enrolments;
pub mod fleet;
pub mod https;
pub mod invoices;
pub mod keypairs;
pub mod keys;
pub mod lifecycle;
pub mod netns;
pub mod records;
pub mod smtp;
pub mod store;
pub mod teams;
pub mod usage;

/// Runs the controller until SIGTERM; returns the exit code.
pub fn run(config: ControllerConfig) -> i32 {
    crate::transport::server::run_to_exit(0, run_async(config))
}

/// The TLS files of a listener: from the configuration, or issued by the controller CA.
struct ListenerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    /// Clients may come without a certificate (an admin zone with tokens).
    client_optional: bool,
    /// The controller's CRL, when clients are verified against the controller's CA.
    crl: Option<PathBuf>,
}

impl ListenerTls {
    /// A certificate the controller issues names what clients reach the listener by
    /// (see [`listener_sans`]).
    fn resolve(
        l: &Listener,
        ca: &ca::ControllerCa,
        config: &ControllerConfig,
    ) -> Result<ListenerTls, String> {
        let (cert, key) = match (&l.cert, &l.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let zone = format!("{:?}", l.zone).to_lowercase();
                ca.listener_cert(
                    &format!("{zone}-{}", l.address.port()),
                    listener_sans(l, config),
                )
                .map_err(|e| e.to_string())?
            }
        };
        let (client_ca, crl) = match (&l.client_ca, l.zone) {
            (Some(p), _) => (Some(p.clone()), None),
            // Appliances, and service accounts with certificates the controller issued.
            (None, Zone::Appliance | Zone::Api) => (Some(ca.ca_cert_path()), Some(ca.crl_path())),
            (None, _) => (None, None),
        };
        Ok(ListenerTls {
            cert,
            key,
            client_ca,
            // Appliance listeners also take appliances without a certificate yet: they
            // may only ask to join (enrolment); everything else there needs one.
            client_optional: l.client_auth == ClientAuth::Optional || l.zone == Zone::Appliance,
            crl,
        })
    }

    fn load(&self) -> Result<TlsMaterial, String> {
        let crls: Vec<&Path> = self.crl.iter().map(PathBuf::as_path).collect();
        TlsMaterial::for_listener(
            &self.cert,
            &self.key,
            self.client_ca.as_deref(),
            self.client_optional,
            &crls,
        )
    }
}

/// The regions of a backend: those that name it (or, for the first backend, name
/// none). A backend no region names has one of its own holding all its slots, named
/// after it (`local` for a lone backend when no region is configured at all).
fn regions_of(config: &ControllerConfig, b: &Backend, first: bool) -> Vec<fleet::ports::Region> {
    let name = b.name();
    let mine: Vec<fleet::ports::Region> = config
        .regions
        .iter()
        .filter(|r| match &r.backend {
            Some(named) => *named == name,
            None => first,
        })
        .map(|r| fleet::ports::Region {
            name: r.name.clone(),
            priority: r.priority,
            capacity: r.capacity,
        })
        .collect();
    if !mine.is_empty() {
        return mine;
    }
    let lone = config.regions.is_empty() && config.backends.len() <= 1;
    vec![fleet::ports::Region {
        name: if lone { "local".into() } else { name },
        priority: 0,
        capacity: b.max_appliances,
    }]
}

/// Names a controller-issued listener certificate carries: `localhost` and its
/// address; for a wildcard address, the loopback addresses, the host's name and the
/// netns bridges' addresses (by which appliances in namespaces reach it); for an
/// appliance listener, the host of every backend's `controller_url` on its port (the
/// name appliances elsewhere, an enrolling instance, reach it by).
fn listener_sans(l: &Listener, config: &ControllerConfig) -> Vec<String> {
    let ip = l.address.ip();
    let mut sans = vec!["localhost".to_string()];
    if ip.is_unspecified() {
        sans.push("127.0.0.1".into());
        sans.push("::1".into());
        sans.extend(netns_gateways(config).iter().map(IpAddr::to_string));
        if let Ok(h) = nix::unistd::gethostname() {
            sans.push(h.to_string_lossy().into_owned());
        }
    } else {
        sans.push(ip.to_string());
    }
    if l.zone == Zone::Appliance {
        for b in config.backend_list() {
            let Some(uri) = b
                .controller_url
                .as_deref()
                .and_then(|u| u.parse::<http::Uri>().ok())
            else {
                continue;
            };
            let port = uri.port_u16().unwrap_or(443);
            if let Some(host) = uri.host()
                && port == l.address.port()
            {
                let host = crate::transport::client::bare_host(host).to_string();
                if !sans.contains(&host) {
                    sans.push(host);
                }
            }
        }
    }
    sans
}

/// A `netns` backend's bridge and subnet.
/// The `ec2` backend `b`.
fn ec2_backend(
    config: &ControllerConfig,
    b: &Backend,
    first: bool,
) -> Result<Arc<ec2::Ec2Backend>, String> {
    let roots = match &b.endpoint_ca {
        Some(path) => crate::certs::load_certs(path)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                tracing::warn!(errors = ?found.errors, "no system CA certificates for https endpoints");
            }
            found.certs
        }
    };
    let tls = crate::transport::client::client_config(&roots, None)?;
    let [images, instance_types, subnets] = b.ec2_catalogue();
    let backend = ec2::Ec2Backend {
        client: ec2::query::Ec2Client {
            endpoint: b.ec2_endpoint().unwrap_or_default(),
            region: b.region.clone().unwrap_or_default(),
            profile: b.profile.clone(),
            credentials_file: b.credentials_file.clone(),
            http: crate::transport::client::Client::new(
                Some(Arc::new(tls)),
                ec2::query::CALL_TIMEOUT,
            ),
        },
        images,
        instance_types,
        subnets,
        security_groups: b.security_groups.clone(),
        agent_install: b.agent_install.clone(),
        agent_port: b.agent_port(),
        regions: regions_of(config, b, first),
        catalogue: Default::default(),
        runtime: tokio::runtime::Handle::current(),
        launched: Default::default(),
    };
    backend
        .catalogue
        .store(Arc::new(backend.configured_catalogue()));
    Ok(Arc::new(backend))
}

fn netns_of(b: &Backend) -> Option<netns::Netns> {
    let (bridge, network, prefix) = b.netns()?;
    Some(netns::Netns {
        bridge,
        network,
        prefix,
    })
}

/// The addresses of the netns backends' bridges.
fn netns_gateways(config: &ControllerConfig) -> Vec<IpAddr> {
    config
        .backend_list()
        .iter()
        .filter_map(netns_of)
        .map(|n| IpAddr::V4(n.gateway()))
        .collect()
}

/// The URL the default backend's appliances post to (and enrol with).
pub(crate) fn controller_url(config: &ControllerConfig) -> Option<String> {
    controller_url_for(config, &config.backend_list()[0])
}

/// The URL the appliances of the backend named `name` post to and enrol with.
pub(crate) fn controller_url_of(config: &ControllerConfig, name: &str) -> Option<String> {
    let b = config.backend_list().iter().find(|b| b.name() == name)?;
    controller_url_for(config, b)
}

/// The URL a backend's appliances post to: the configured one, or the first appliance
/// listener (a wildcard address as its appliances reach the host).
fn controller_url_for(config: &ControllerConfig, b: &Backend) -> Option<String> {
    if let Some(url) = &b.controller_url {
        return Some(url.clone());
    }
    let l = config
        .listeners
        .iter()
        .find(|l| l.zone == Zone::Appliance)?;
    let ip = match l.address.ip() {
        // Appliances in namespaces reach the host at the bridge's address.
        IpAddr::V4(v4) if v4.is_unspecified() => {
            netns_of(b).map_or(IpAddr::from([127, 0, 0, 1]), |n| IpAddr::V4(n.gateway()))
        }
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ip => ip,
    };
    Some(format!("https://{}", SocketAddr::new(ip, l.address.port())))
}

/// The webhook signing key: read, or created (random, 0600) on first start.
fn webhook_secret(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => Err(format!("{}: empty", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // 256 random bits, hex: what a bearer token is made of.
            let (secret, _) = auth::new_token();
            crate::fsutil::write_atomic(path, format!("{secret}\n").as_bytes(), 0o600)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(secret.into_bytes())
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Whether `process` appliances run as their own users (the controller must be root to
/// start them so). Their agents then pass through the state directory to reach their own
/// directories: it, `appliances/`, `run/` and the CA directory (for the CA certificate
/// and CRL they load) become searchable but not listable by others, every key and the
/// CA's index stay the controller's alone (0600), as do the database and the webhook
/// secret; every directory above the state directory must already be searchable.
fn isolation(config: &ControllerConfig, pki_dir: &Path) -> Result<Option<u32>, String> {
    fn io(p: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
        move |e| format!("{}: {e}", p.display())
    }
    use std::os::unix::fs::PermissionsExt;
    // The first backend's settings hold for all: one id per slot of every backend.
    let first = &config.backend_list()[0];
    if !first.isolate_appliances {
        return Ok(None);
    }
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "the controller does not run as root: appliances run as its own user, beside its \
             CA key, database and webhook secret; only the agents' directive policy keeps \
             tenants' configurations away from them (run the controller as root to give each \
             appliance its own user)"
        );
        return Ok(None);
    }
    let state = &config.state_dir;
    let appliances = state.join("appliances");
    let run = state.join("run");
    crate::fsutil::ensure_dir(&appliances, 0o711).map_err(io(&appliances))?;
    crate::fsutil::ensure_dir(&run, 0o711).map_err(io(&run))?;
    for dir in [state.as_path(), &appliances, &run, pki_dir] {
        let mode = std::fs::metadata(dir)
            .map_err(io(dir))?
            .permissions()
            .mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o750) | 0o711))
            .map_err(io(dir))?;
    }
    for entry in std::fs::read_dir(pki_dir).map_err(io(pki_dir))?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_file() && (name.ends_with(".key") || name.ends_with(".json")) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&path))?;
        }
    }
    for ancestor in state.ancestors().skip(1) {
        let searchable = std::fs::metadata(ancestor)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false);
        if !searchable {
            return Err(format!(
                "backend.isolate_appliances: {} is not searchable by other users, so \
                 appliances could not reach their directories; make it searchable \
                 (chmod o+x) or set backend.isolate_appliances = false",
                ancestor.display()
            ));
        }
    }
    Ok(Some(first.appliance_id_first))
}

async fn run_async(config: ControllerConfig) -> i32 {
    if let Err(e) = crate::fsutil::ensure_dir(&config.state_dir, 0o750) {
        tracing::error!(dir = %config.state_dir.display(), error = %e, "cannot create the state directory");
        return exit::FAILURE;
    }
    let pki_dir = config
        .pki
        .dir
        .clone()
        .unwrap_or_else(|| config.state_dir.join("ca"));
    let ca = match ca::ControllerCa::open(
        &pki_dir,
        config.pki.certificate_days,
        config.pki.rotate_before_days,
    ) {
        Ok(ca) => Arc::new(ca),
        Err(e) => {
            tracing::error!("controller CA {}: {e}", pki_dir.display());
            return exit::TLS_MATERIAL;
        }
    };
    let appliance_ids = match isolation(&config, &pki_dir) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    // The netns backend's bridge first: appliance listeners may listen on its address.
    // The netns backends' bridges first: appliance listeners may listen on their
    // addresses.
    for n in config.backend_list().iter().filter_map(netns_of) {
        if !nix::unistd::geteuid().is_root() {
            tracing::error!("the netns backend needs root (network namespaces, a bridge)");
            return exit::CONFIG;
        }
        let ports: Vec<u16> = config
            .listeners
            .iter()
            .filter(|l| l.zone == Zone::Appliance)
            .map(|l| l.address.port())
            .collect();
        if let Err(e) = n.ensure_bridge(&ports) {
            tracing::error!(bridge = %n.bridge, error = %e, "cannot set up the appliances' bridge");
            return exit::FAILURE;
        }
    }
    let mut bound = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let files = match ListenerTls::resolve(l, &ca, &config) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("listeners[{i}]: {e}");
                return exit::TLS_MATERIAL;
            }
        };
        let material = match files.load() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("listeners[{i}]: {e}");
                return exit::TLS_MATERIAL;
            }
        };
        match bind(l.address) {
            Ok(socket) => bound.push((
                l.zone,
                socket,
                files,
                Arc::new(ArcSwap::from_pointee(material)),
            )),
            Err(e) => {
                tracing::error!(address = %l.address, error = %e, "cannot listen");
                return exit::BIND;
            }
        }
    }
    let store =
        match store::Store::open(&config.database.url, config.database.max_connections).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!("cannot open the store: {e}");
                return exit::FAILURE;
            }
        };
    let secret_path = config
        .webhooks
        .secret_file
        .clone()
        .unwrap_or_else(|| config.state_dir.join("webhook.secret"));
    let secret = match webhook_secret(&secret_path) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("webhook secret: {e}");
            return exit::FAILURE;
        }
    };
    let mut backends: Vec<(String, Arc<dyn fleet::ports::Backend>)> = Vec::new();
    let mut slot_base = 0u32;
    for (i, b) in config.backend_list().iter().enumerate() {
        let Some(url) = controller_url_for(&config, b) else {
            tracing::error!(backend = %b.name(), "no appliance listener and no controller_url");
            return exit::CONFIG;
        };
        if b.kind == crate::config::controller::BackendKind::Ec2 {
            match ec2_backend(&config, b, i == 0) {
                Ok(ec2) => {
                    // The catalogue is described now and then; the calls that make
                    // appliances do not wait for it.
                    let (refresh, name) = (ec2.clone(), b.name());
                    tokio::spawn(async move {
                        loop {
                            for e in refresh.refresh_catalogue().await {
                                tracing::warn!(backend = %name, error = %e, "cannot describe the ec2 catalogue");
                            }
                            tokio::time::sleep(ec2::CATALOGUE_REFRESH).await;
                        }
                    });
                    backends.push((b.name(), ec2));
                }
                Err(e) => {
                    tracing::error!(backend = %b.name(), "{e}");
                    return exit::CONFIG;
                }
            }
            continue;
        }
        backends.push((
            b.name(),
            Arc::new(backend::ProcessBackend {
                root: config.state_dir.join("appliances"),
                run_root: config.state_dir.join("run"),
                binary: b
                    .agent_binary
                    .clone()
                    .or_else(|| std::env::current_exe().ok())
                    .unwrap_or_else(|| PathBuf::from("applianced")),
                first_address: b.first_address,
                slot_base,
                max_appliances: b.max_appliances,
                agent_port: b.agent_port(),
                controller_url: url,
                controller_ca: b.controller_ca.clone().unwrap_or_else(|| ca.ca_cert_path()),
                ca_cert: ca.ca_cert_path(),
                crl: ca.crl_path(),
                heartbeat_interval: config.appliances.heartbeat_interval.0,
                appliance_ids,
                regions: regions_of(&config, b, i == 0),
                flavors: config.flavors.clone(),
                netns: netns_of(b),
            }),
        ));
        // Slots are numbered across backends: each appliance's user id and runtime
        // directory stay its own.
        if b.has_slots() {
            slot_base += b.max_appliances;
        }
    }
    // After a revocation, appliance listeners that verify against the controller's CA
    // load the new CRL: new handshakes with a revoked certificate fail.
    let mut with_crl: Vec<(Arc<ListenerTls>, Arc<ArcSwap<TlsMaterial>>)> = Vec::new();
    let mut issued = Vec::new();
    let mut all: Reloadable = Vec::new();
    let mut listeners = Vec::new();
    for ((zone, socket, files, tls), l) in bound.into_iter().zip(&config.listeners) {
        let files = Arc::new(files);
        if files.crl.is_some() {
            with_crl.push((files.clone(), tls.clone()));
        }
        all.push((l.clone(), tls.clone()));
        if l.cert.is_none() {
            issued.push((l.clone(), tls.clone()));
        }
        listeners.push((zone, socket, tls));
    }
    let on_revoke = Box::new(move || {
        for (files, tls) in &with_crl {
            match files.load() {
                Ok(m) => tls.store(Arc::new(m)),
                Err(e) => tracing::error!("cannot reload the CRL of a listener: {e}"),
            }
        }
    });
    let agents = match agent_client(&ca, &config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("controller client certificate: {e}");
            return exit::TLS_MATERIAL;
        }
    };
    let roots =
        crate::certs::load_certs(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"))
            .unwrap_or_default();
    let hooks_tls = crate::transport::client::client_config(&roots, None)
        .ok()
        .map(Arc::new);
    let hooks = Box::new(Client::new(hooks_tls, config.webhooks.timeout.0));
    let mailer: Option<Box<dyn fleet::ports::Mailer>> = match &config.smtp {
        None => None,
        Some(smtp) => match smtp::SmtpMailer::new(smtp) {
            Ok(m) => Some(Box::new(m)),
            Err(e) => {
                tracing::error!("smtp: {e}");
                return exit::CONFIG;
            }
        },
    };
    let fleet = Arc::new(fleet::Fleet::new(
        fleet::Parts {
            store: store.clone(),
            ca: ca.clone(),
            backends,
            agents,
            hooks,
            clock: Arc::new(fleet::SystemClock),
            on_revoke,
            mailer,
        },
        config.clone(),
        secret,
    ));
    fleet.free_dead_leases().await;
    tokio::spawn(fleet.clone().leases_loop());
    for _ in 0..config.tasks.workers {
        tokio::spawn(fleet.clone().worker());
    }
    tokio::spawn(fleet.clone().timers_loop());
    tokio::spawn(fleet.clone().webhooks_loop());
    tokio::spawn(renew_certificates(fleet.clone(), ca.clone(), issued));

    let metrics = TransportMetrics::default();
    let mut servers = Vec::new();
    for (zone, socket, tls) in listeners {
        let app = Arc::new(api::ControllerApp::new(zone, fleet.clone()));
        let addr = socket
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%addr, ?zone, "controller listening");
        servers.push(Server::start(
            vec![socket],
            tls,
            ServerLimits::default(),
            metrics.clone(),
            app,
        ));
    }
    notify_ready();
    let on_hup = || async {
        reload_tls(&fleet, &ca, &all);
        tracing::info!("SIGHUP: TLS material reloaded");
    };
    if let Err(e) = crate::transport::server::until_terminated(on_hup).await {
        tracing::error!(error = %e, "cannot install signal handlers");
        return exit::FAILURE;
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    for server in servers {
        server.shutdown().await;
    }
    store.close().await;
    tracing::info!("stopped; appliances keep running");
    exit::OK
}

/// Listeners and their TLS material, for reloading.
type Reloadable = Vec<(Listener, Arc<ArcSwap<TlsMaterial>>)>;

/// Once an hour: certificates the controller issued itself (its client certificate for
/// agents, listener certificates the configuration does not name) are issued anew when
/// they enter the rotation window, and put in use without a restart.
async fn renew_certificates(
    fleet: Arc<fleet::Fleet>,
    ca: Arc<ca::ControllerCa>,
    listeners: Reloadable,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        reload_tls(&fleet, &ca, &listeners);
    }
}

/// The client agents are called with: the controller's client certificate (issued anew
/// when it is within its rotation window).
fn agent_client(
    ca: &ca::ControllerCa,
    config: &ControllerConfig,
) -> Result<Box<dyn fleet::ports::AgentClient>, String> {
    Ok(Box::new(Client::new(
        Some(ca.agent_client().map_err(|e| e.to_string())?),
        config.tasks.agent_timeout.0,
    )))
}

/// Re-reads (and, for those the controller issues, renews) every listener's certificate,
/// key, client CA and CRL, and the controller's client certificate. New connections use
/// them; open ones keep theirs.
fn reload_tls(fleet: &fleet::Fleet, ca: &ca::ControllerCa, listeners: &Reloadable) {
    match agent_client(ca, fleet.config()) {
        Ok(c) => fleet.set_agent_client(c),
        Err(e) => tracing::error!("controller client certificate: {e}"),
    }
    for (l, tls) in listeners {
        match ListenerTls::resolve(l, ca, fleet.config()).and_then(|files| files.load()) {
            Ok(m) => {
                if m.server_cert.serial != tls.load().server_cert.serial {
                    tracing::info!(address = %l.address, serial = %m.server_cert.serial, "listener certificate changed");
                }
                tls.store(Arc::new(m));
            }
            Err(e) => {
                tracing::error!(address = %l.address, "keeping the listener's TLS material: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_appliance_listener_certificate_names_the_controller_url_appliances_use() {
        let config: ControllerConfig = crate::config::parse_toml(
            "[[listeners]]\naddress = \"10.0.0.1:8444\"\nzone = \"appliance\"\n\
             [[listeners]]\naddress = \"10.0.0.1:8443\"\nzone = \"admin\"\n\
             [[backends]]\nname = \"a\"\ncontroller_url = \"https://controller.example:8444\"\n\
             [[backends]]\nname = \"b\"\nkind = \"ec2\"\nregion = \"r\"\nimage = \"ami-1\"\n\
             instance_type = \"t3.small\"\ncontroller_url = \"https://[2001:db8::1]:8444/\"\n\
             [[backends]]\nname = \"c\"\ncontroller_url = \"https://elsewhere.example:9999\"\n",
        )
        .unwrap();
        assert_eq!(
            listener_sans(&config.listeners[0], &config),
            ["localhost", "10.0.0.1", "controller.example", "2001:db8::1"]
        );
        assert_eq!(
            listener_sans(&config.listeners[1], &config),
            ["localhost", "10.0.0.1"],
            "only appliance listeners"
        );
    }
}
