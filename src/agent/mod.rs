//! `applianced agent`: the daemon on every appliance.
//!
//! Routes are parsed in [`routes`], answered here from the domain modules ([`store`],
//! [`status`]), and turned into responses in [`response`]. One log event and one metric
//! sample per request, with the client's identity.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::transport::body::RequestBody;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, header};
use http_body_util::Full;
use hyper::{Request, Response};
use serde::Serialize;

use crate::config::agent::{AgentConfig, ServiceManagerKind, TlsPaths};
use crate::exit;
use crate::fsutil::{ensure_dir, write_atomic};
use crate::transport::server::Server;
use crate::transport::tls::AllowList;
use crate::transport::{App, ConnInfo, ServerLimits, TlsMaterial, TlsSettings};

pub mod addresses;
pub mod bundle;
pub mod daemons;
pub mod enrol;
pub mod handoff;
pub mod ids;
pub mod instances;
pub mod metrics;
pub mod octavia;
pub mod policy;
pub mod render;
pub mod reporter;
pub mod response;
pub mod routes;
pub mod status;
pub mod store;

use daemons::{DirectManager, ServiceManager, SystemdManager};
use ids::InstanceId;
use instances::{InstanceManager, InstanceSettings};
use metrics::AgentMetrics;
use response::{AgentError, Reply};
use routes::{Route, RouteError};
use status::{Sampler, StatusCache};
use store::{Daemon, InstanceStore, running_pid};

/// API version reported by `GET /`.
pub const API_VERSION: &str = "1.0";

/// Loads the TLS material named by the configuration (read-only: `config check` uses it).
pub fn load_tls(config: &AgentConfig) -> Result<TlsMaterial, String> {
    TlsMaterial::load(&config.tls_paths(), tls_settings(config))
}

fn tls_settings(config: &AgentConfig) -> TlsSettings {
    TlsSettings {
        tls13_only: config.server.tls13_only,
        allowed_clients: AllowList::new(&config.server.allowed_clients),
    }
}

/// The agent: everything a request handler needs.
pub struct Agent {
    tls: Arc<ArcSwap<TlsMaterial>>,
    tls_paths: TlsPaths,
    instances: Arc<InstanceManager>,
    status: Arc<StatusCache>,
    metrics: Arc<AgentMetrics>,
    appliance_id: String,
    max_body_bytes: u64,
    body_timeout: Duration,
    certificate_lock: tokio::sync::Mutex<()>,
    /// Who may name an actor in `X-Applianced-Actor`.
    actor_clients: AllowList,
    /// Octavia's amphora API 1.0 (`//` and `/1.0/...`).
    octavia: Arc<octavia::Octavia>,
}

/// The header through which the controller names the user a request acts for.
pub const ACTOR_HEADER: &str = "x-applianced-actor";

impl App for Agent {
    async fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        conn: Arc<ConnInfo>,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let actor = actor(req.headers(), &conn, &self.actor_clients).map(str::to_owned);
        let (response, code, label) = if octavia::routes::claims(&path) {
            self.octavia_request(&method, &path, req).await
        } else {
            self.native_request(&method, &path, req, &conn).await
        };
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        self.metrics
            .observe_request(label, status, elapsed.as_secs_f64());
        // Display (%) rather than Debug for strings, an integer duration: this line is
        // written for every request.
        tracing::info!(
            client = %client_name(&conn),
            client_sans = %crate::transport::tls::Sans(conn.identity.as_ref().map(|i| i.dns_names.as_slice()).unwrap_or_default()),
            client_serial = %conn.identity.as_ref().map(|i| i.serial.as_str()).unwrap_or("-"),
            peer = %conn.peer,
            actor = %actor.as_deref().unwrap_or("-"),
            method = %method,
            path = %path,
            route = %label,
            status,
            code = %code,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
        response
    }
}

/// The user a request acts for, as named by a client allowed to name one: printable
/// ASCII without blanks, at most 128 bytes (it goes into the log line as is).
fn actor<'a>(headers: &'a HeaderMap, conn: &ConnInfo, allowed: &AllowList) -> Option<&'a str> {
    let value = headers.get(ACTOR_HEADER)?.to_str().ok()?;
    let trusted = !allowed.is_empty() && conn.identity.as_ref().is_some_and(|i| allowed.allows(i));
    let clean =
        !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    (trusted && clean).then_some(value)
}

impl Agent {
    /// Answers one request of the native API: the response, the stable code and the
    /// route label for the request log.
    async fn native_request(
        &self,
        method: &Method,
        path: &str,
        req: Request<RequestBody>,
        conn: &ConnInfo,
    ) -> (Response<Full<Bytes>>, &'static str, &'static str) {
        let wants_json = accepts_json(req.headers());
        let route = routes::parse(method, path);
        let label = route.as_ref().map(Route::label).unwrap_or("(unknown)");
        let result = match route {
            Ok(route) => self.dispatch(route, req).await,
            Err(RouteError::Unknown) => Err(AgentError::UnknownRoute),
            Err(RouteError::BadInstanceId(id)) => Err(AgentError::BadInstanceId(id)),
            Err(RouteError::BadFileName(name)) => Err(AgentError::BadFileName(name)),
        };
        if let Err(
            AgentError::Internal(detail)
            | AgentError::InsufficientStorage(detail)
            | AgentError::OutOfDescriptors(detail),
        ) = &result
        {
            tracing::error!(%method, %path, client = %client_name(conn), error = %detail, "internal error");
        }
        let (mut response, code) = response::build(result, wants_json);
        if method == Method::HEAD {
            *response.body_mut() = Full::new(Bytes::new());
        }
        (response, code, label)
    }
}

/// The client's name for logs (the agent's listeners always verify a certificate).
fn client_name(conn: &ConnInfo) -> &str {
    conn.identity.as_ref().map(|i| i.name()).unwrap_or("-")
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

#[derive(Serialize)]
struct RootInfo<'a> {
    api_version: &'a str,
    agent_version: &'a str,
    appliance_id: &'a str,
}

#[derive(Serialize)]
struct ListenerInfo {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    haproxy: &'static str,
    stunnel: &'static str,
}

impl Agent {
    async fn dispatch(&self, route: Route, req: Request<RequestBody>) -> Result<Reply, AgentError> {
        match route {
            Route::Root => Ok(Reply::json(&RootInfo {
                api_version: API_VERSION,
                agent_version: env!("CARGO_PKG_VERSION"),
                appliance_id: &self.appliance_id,
            })),
            Route::Status => Ok(Reply::Json(Bytes::clone(&self.status.load()))),
            Route::Metrics => Ok(Reply::Raw {
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: Bytes::from(self.metrics.encode()),
            }),
            Route::ServiceStatus => self.blocking(service_status).await,
            Route::ListInstances { json: false } => self.blocking(list_instances).await,
            Route::ListInstances { json: true } => self.blocking(|s| listeners(s, None)).await,
            Route::GetInstance { id, json: false } => {
                self.blocking(move |s| match s.has_files(&id)? {
                    true => Ok(Reply::ok("")),
                    false => Err(AgentError::NotFound),
                })
                .await
            }
            Route::GetInstance { id, json: true } => {
                self.blocking(move |s| listeners(s, Some(id))).await
            }
            Route::DeleteInstance { id } => {
                let applied = self.instance_op(move |m| m.delete_instance(&id)).await?;
                Ok(Reply::ok(applied.output))
            }
            Route::GetFile { id, file } => {
                let content_type = match file {
                    ids::InstanceFile::Custom503 => "application/octet-stream",
                    _ => "text/plain; charset=utf-8",
                };
                let data = self.instance_op(move |m| m.get_file(&id, &file)).await?;
                Ok(Reply::Raw {
                    content_type,
                    body: Bytes::from(data),
                })
            }
            Route::PutFile { id, file } => {
                let body = self.read_body(req).await?;
                let applied = self
                    .instance_op(move |m| m.put_file(&id, &file, &body))
                    .await?;
                Ok(Reply::created(applied.output))
            }
            Route::DeleteFile { id, file } => {
                let applied = self.instance_op(move |m| m.delete_file(&id, &file)).await?;
                Ok(Reply::ok(applied.output))
            }
            Route::PutAgentCertificate => {
                let body = self.read_body(req).await?;
                self.put_agent_certificate(body).await
            }
        }
    }

    /// Runs an instance operation on the blocking pool (it runs daemons and waits).
    async fn instance_op<T, F>(&self, f: F) -> Result<T, AgentError>
    where
        T: Send + 'static,
        F: FnOnce(&InstanceManager) -> Result<T, instances::InstanceError> + Send + 'static,
    {
        let manager = self.instances.clone();
        tokio::task::spawn_blocking(move || f(&manager))
            .await
            .map_err(|e| AgentError::Internal(format!("worker failed: {e}")))?
            .map_err(AgentError::from)
    }

    /// Runs file-system work off the async workers.
    async fn blocking<F>(&self, f: F) -> Result<Reply, AgentError>
    where
        F: FnOnce(&InstanceStore) -> Result<Reply, AgentError> + Send + 'static,
    {
        let store = self.instances.store().clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| AgentError::Internal(format!("worker failed: {e}")))?
    }

    /// Reads the body within the configured size and time limits.
    async fn read_body(&self, req: Request<RequestBody>) -> Result<Bytes, AgentError> {
        use crate::transport::body::{BodyError, read_limited};
        read_limited(req, self.max_body_bytes, self.body_timeout)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(n) => AgentError::PayloadTooLarge(n),
                BodyError::Timeout => AgentError::BodyTimeout,
                BodyError::Read(m) => AgentError::BadRequest {
                    code: "bad_body",
                    message: m,
                },
            })
    }

    async fn put_agent_certificate(&self, body: Bytes) -> Result<Reply, AgentError> {
        // One swap at a time, so files and the live configuration always agree.
        let _guard = self.certificate_lock.lock().await;
        let current = self.tls.load_full();
        // A certificate alone renews the certificate of the key the agent has (one the
        // appliance made and keeps): the bundle is completed with that key, which must
        // match.
        let has_key = crate::certs::parse_pem(&body).is_ok_and(|b| !b.keys.is_empty());
        let body = if has_key {
            body
        } else {
            let path = self.tls_paths.key.clone();
            let key = tokio::task::spawn_blocking(move || std::fs::read(&path))
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))?
                .map_err(|e| AgentError::Internal(format!("the current key: {e}")))?;
            let mut whole = body.to_vec();
            whole.push(b'\n');
            whole.extend_from_slice(&key);
            Bytes::from(whole)
        };
        let bundle = current.validate_server_bundle(&body)?;
        let paths = self.tls_paths.clone();
        let (cert_pem, key_pem) = (bundle.cert_pem.clone(), bundle.key_pem.clone());
        tokio::task::spawn_blocking(move || write_certificate_pair(&paths, &cert_pem, &key_pem))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
        let info = bundle.material.server_cert.clone();
        self.metrics.set_cert_expiry("agent", info.not_after);
        self.tls.store(Arc::new(bundle.material));
        tracing::info!(serial = %info.serial, cn = ?info.subject_cn, "agent certificate replaced");
        Ok(Reply::created(format!(
            "certificate {} serial {} valid until {}",
            info.subject_cn.as_deref().unwrap_or("-"),
            info.serial,
            crate::certs::format_unix(info.not_after)
        )))
    }
}

fn list_instances(store: &InstanceStore) -> Result<Reply, AgentError> {
    let ids = store.list()?;
    let details: String = ids.iter().map(|id| format!("{id}\n")).collect();
    Ok(Reply::Raw {
        content_type: "text/plain; charset=utf-8",
        body: Bytes::from(details),
    })
}

fn daemon_state(store: &InstanceStore, id: &InstanceId, daemon: Daemon) -> DaemonState {
    if !store.has_config(id, daemon) {
        return DaemonState::Absent;
    }
    match running_pid(&store.pid_file(id, daemon), daemon.name()) {
        Some(pid) => DaemonState::Running(pid),
        None => DaemonState::Stopped,
    }
}

fn instance_health(store: &InstanceStore, id: &InstanceId) -> (&'static str, [DaemonState; 2]) {
    let states = Daemon::ALL.map(|d| daemon_state(store, id, d));
    let configured = states.iter().filter(|s| **s != DaemonState::Absent).count();
    let running = states
        .iter()
        .filter(|s| matches!(s, DaemonState::Running(_)))
        .count();
    let health = match (configured, running) {
        (0, _) => "PENDING",
        (c, r) if c == r => "OK",
        (_, 0) => "DOWN",
        _ => "DEGRADED",
    };
    (health, states)
}

fn service_status(store: &InstanceStore) -> Result<Reply, AgentError> {
    let mut out = String::new();
    for id in store.list()? {
        let (health, states) = instance_health(store, &id);
        out.push_str(&format!("{id:<52}{health}\n"));
        for (daemon, state) in Daemon::ALL.iter().zip(states) {
            match state {
                DaemonState::Absent => {}
                DaemonState::Stopped => out.push_str(&format!("  {:<17}stopped\n", daemon.name())),
                DaemonState::Running(pid) => {
                    out.push_str(&format!("  {:<17}running (pid {pid})\n", daemon.name()))
                }
            }
        }
    }
    Ok(Reply::Raw {
        content_type: "text/plain; charset=utf-8",
        body: Bytes::from(out),
    })
}

fn listeners(store: &InstanceStore, only: Option<InstanceId>) -> Result<Reply, AgentError> {
    let only_one = only.is_some();
    let ids = match only {
        Some(id) if store.has_files(&id)? => vec![id],
        Some(_) => return Err(AgentError::NotFound),
        None => store.list()?,
    };
    let infos: Vec<ListenerInfo> = ids
        .into_iter()
        .map(|id| {
            let (status, [haproxy, stunnel]) = instance_health(store, &id);
            ListenerInfo {
                kind: listener_type(store, &id),
                status,
                haproxy: haproxy.word(),
                stunnel: stunnel.word(),
                id: id.to_string(),
            }
        })
        .collect();
    // `/listeners` answers a list, `/listeners/:id` one object.
    Ok(match (only_one, infos.as_slice()) {
        (true, [one]) => Reply::json(one),
        _ => Reply::json(&infos),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DaemonState {
    Absent,
    Stopped,
    Running(u32),
}

impl DaemonState {
    fn word(self) -> &'static str {
        match self {
            DaemonState::Running(_) => "running",
            DaemonState::Absent | DaemonState::Stopped => "stopped",
        }
    }
}

/// HTTPS when TLS is terminated (stunnel, or an haproxy `bind ... ssl`), else haproxy's mode.
fn listener_type(store: &InstanceStore, id: &InstanceId) -> &'static str {
    let haproxy =
        std::fs::read_to_string(store.config_path(id, Daemon::Haproxy)).unwrap_or_default();
    let terminates_tls = store.has_config(id, Daemon::Stunnel)
        || haproxy.lines().any(|l| {
            let l = l.trim();
            l.starts_with("bind ") && l.split_whitespace().any(|w| w == "ssl")
        });
    let http = haproxy
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["mode", "http"]);
    match (terminates_tls, http, haproxy.is_empty()) {
        (true, _, _) => "HTTPS",
        (false, true, _) => "HTTP",
        (false, false, false) => "TCP",
        (false, false, true) => "UNKNOWN",
    }
}

/// Writes a new certificate and key durably, switching both together. The pair is first
/// staged as one file beside the certificate (`<cert>.pair`: key then chain, written
/// atomically, 0600): its rename is the commit point. Then the key and the certificate
/// are each replaced atomically and the staged file removed. A crash before the commit
/// leaves the old pair; after it, [`finish_pending_swap`] installs the staged pair at the
/// next start, so the files on disk never hold a key and a certificate of two pairs.
fn write_certificate_pair(
    paths: &TlsPaths,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), AgentError> {
    let staged = staged_pair_path(&paths.cert);
    write_atomic(&staged, format!("{key_pem}{cert_pem}").as_bytes(), 0o600)?;
    install_pair(paths, cert_pem, key_pem)?;
    crate::fsutil::remove_durable(&staged)?;
    Ok(())
}

fn install_pair(paths: &TlsPaths, cert_pem: &str, key_pem: &str) -> std::io::Result<()> {
    write_atomic(&paths.key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&paths.cert, cert_pem.as_bytes(), 0o644)
}

fn staged_pair_path(cert: &Path) -> std::path::PathBuf {
    suffixed(cert, ".pair")
}

fn suffixed(p: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

/// The key and chain of a staged pair when it is complete and the key matches the
/// certificate, `None` otherwise.
fn complete_pair(pem: &[u8]) -> Option<(String, String)> {
    let mut bundle = crate::certs::parse_pem(pem).ok()?;
    if bundle.keys.len() != 1 || bundle.certs.is_empty() {
        return None;
    }
    let key = bundle.keys.remove(0);
    let key_pem = crate::transport::tls::pem_encode_key(&key);
    let cert_pem = crate::transport::tls::pem_encode_certs(&bundle.certs);
    crate::certs::certified_key(bundle.certs, key).ok()?;
    Some((cert_pem, key_pem))
}

/// At start: installs a staged pair left by an interrupted [`write_certificate_pair`]
/// when it is complete and matching, discards it otherwise (the files in place are then
/// the previous pair, untouched). Staged `*.next` files of earlier releases, which were
/// renamed one at a time, are discarded the same way unless they form a matching pair.
fn finish_pending_swap(paths: &TlsPaths) {
    let staged = staged_pair_path(&paths.cert);
    let (legacy_key, legacy_cert) = (
        suffixed(&paths.key, ".next"),
        suffixed(&paths.cert, ".next"),
    );
    let pair = match std::fs::read(&staged) {
        Ok(pem) => Some(pem),
        Err(_) if legacy_cert.is_file() => {
            // An earlier release renamed the key first: the matching key is the staged
            // one, or the one already renamed into place.
            let key = std::fs::read(&legacy_key)
                .or_else(|_| std::fs::read(&paths.key))
                .unwrap_or_default();
            let cert = std::fs::read(&legacy_cert).unwrap_or_default();
            Some([key, cert].concat())
        }
        Err(_) => None,
    };
    if let Some(pem) = pair {
        match complete_pair(&pem) {
            Some((cert_pem, key_pem)) => match install_pair(paths, &cert_pem, &key_pem) {
                Ok(()) => tracing::warn!(
                    cert = %paths.cert.display(),
                    "completed an interrupted certificate swap"
                ),
                Err(e) => {
                    // Keep the staged pair for the next start.
                    tracing::error!(cert = %paths.cert.display(), error = %e, "cannot complete an interrupted certificate swap");
                    return;
                }
            },
            None => tracing::warn!(
                cert = %paths.cert.display(),
                "discarded an incomplete certificate swap; the previous certificate stays"
            ),
        }
    }
    for p in [&staged, &legacy_key, &legacy_cert] {
        if let Err(e) = crate::fsutil::remove_durable(p) {
            tracing::error!(file = %p.display(), error = %e, "cannot remove a staged certificate file");
        }
    }
}

/// Removes the temporary files of writes a crash interrupted (instance files, rendered
/// configurations, the agent's own certificate and key), before anything is written.
fn remove_leftovers(config: &AgentConfig) {
    let paths = config.tls_paths();
    let mut dirs = vec![config.state_dir.join("instances"), config.run_dir.clone()];
    for p in [&paths.cert, &paths.key] {
        if let Some(dir) = p.parent() {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs.dedup();
    for dir in dirs {
        // The certificate's directory is not ours to walk: only its own level.
        let result = if dir.starts_with(&config.state_dir) || dir.starts_with(&config.run_dir) {
            crate::fsutil::remove_leftovers(&dir)
        } else {
            crate::fsutil::remove_leftovers_here(&dir)
        };
        match result {
            Ok(removed) => {
                for p in removed {
                    tracing::info!(file = %p.display(), "removed a temporary file left by an interrupted write");
                }
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot look for leftover temporary files")
            }
        }
    }
}

/// Who instances' daemons run as. A root agent's direct service manager runs each
/// instance's as its own user; the systemd units run them as `daemon_group`'s user, which
/// the agent must share the group of. Their directories must be reachable by those users:
/// the agent's own directories are made searchable (not listable) by others, and every
/// directory above them must already be.
fn daemon_isolation(config: &AgentConfig) -> Result<instances::Isolation, String> {
    use std::os::unix::fs::PermissionsExt;
    let i = &config.instances;
    if i.service_manager == ServiceManagerKind::Systemd {
        let Some(name) = i.daemon_group.as_deref() else {
            return Ok(instances::Isolation::None);
        };
        let group = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| format!("instances.daemon_group: no group {name:?}"))?;
        let member = nix::unistd::getegid() == group.gid
            || nix::unistd::getgroups().is_ok_and(|g| g.contains(&group.gid))
            || nix::unistd::geteuid().is_root();
        if !member {
            return Err(format!(
                "instances.daemon_group: the agent is not a member of {name:?}, so it cannot \
                 give instances' files to it"
            ));
        }
        return Ok(instances::Isolation::Group(group.gid.as_raw()));
    }
    if !i.isolate_daemons {
        return Ok(instances::Isolation::None);
    }
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "the agent does not run as root: haproxy and stunnel run with the agent's own user \
             and could read whatever it can if a configuration were allowed to name it \
             (run the agent as root to give each instance's daemons their own user)"
        );
        return Ok(instances::Isolation::None);
    }
    let instances_dir = config.state_dir.join("instances");
    for dir in [&config.state_dir, &instances_dir, &config.run_dir] {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    for dir in [&instances_dir, &config.run_dir] {
        for ancestor in dir.ancestors().skip(1) {
            let searchable = std::fs::metadata(ancestor)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false);
            if !searchable {
                return Err(format!(
                    "instances.isolate_daemons: {} is not searchable by other users, so \
                     instances' daemons could not reach their files; make it searchable \
                     (chmod o+x) or set instances.isolate_daemons = false",
                    ancestor.display()
                ));
            }
        }
    }
    Ok(instances::Isolation::PerInstance(instances::DaemonIds {
        first: i.daemon_id_first,
        count: i.daemon_id_count,
    }))
}

/// Runs the agent until SIGTERM; returns the exit code.
pub fn run(config: AgentConfig) -> i32 {
    let workers = config.limits.worker_threads;
    crate::transport::server::run_to_exit(workers, run_async(config))
}

async fn run_async(config: AgentConfig) -> i32 {
    remove_leftovers(&config);
    finish_pending_swap(&config.tls_paths());
    let material = match load_tls(&config) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("cannot load TLS material: {e}");
            return exit::TLS_MATERIAL;
        }
    };
    for (dir, mode) in [(&config.state_dir, 0o750), (&config.run_dir, 0o750)] {
        if let Err(e) =
            ensure_dir(dir, mode).and_then(|_| ensure_dir(&dir.join("instances"), 0o750))
        {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create directory");
            return exit::FAILURE;
        }
    }
    let mut listeners = Vec::new();
    for addr in config.server.listen.iter().chain(&config.octavia.listen) {
        match crate::transport::server::bind(*addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen");
                return exit::BIND;
            }
        }
    }

    let metrics = Arc::new(AgentMetrics::new());
    metrics.set_cert_expiry("agent", material.server_cert.not_after);
    let appliance_id = config
        .appliance_id
        .clone()
        .or_else(|| material.server_cert.subject_cn.clone())
        .unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let tls = Arc::new(ArcSwap::from_pointee(material));
    let isolation = match daemon_isolation(&config) {
        Ok(isolation) => isolation,
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    let store = InstanceStore::new(&config.state_dir, &config.run_dir);
    let services: Arc<dyn ServiceManager> = match config.instances.service_manager {
        ServiceManagerKind::Direct => Arc::new(DirectManager {
            store: store.clone(),
            haproxy_bin: config.instances.haproxy.clone(),
            stunnel_bin: config.instances.stunnel.clone(),
            timeout: config.instances.operation_timeout.0,
            self_exe: std::env::current_exe().unwrap_or_else(|_| "applianced".into()),
        }),
        ServiceManagerKind::Systemd => Arc::new(SystemdManager {
            systemctl: config.instances.systemctl.clone(),
            store: store.clone(),
            timeout: config.instances.operation_timeout.0,
        }),
    };
    let instances = Arc::new(InstanceManager::new(
        store.clone(),
        services,
        InstanceSettings {
            management_ip: config.management_ip(),
            allow_invalid_dates: config.instances.allow_expired_certificates,
            haproxy_bin: config.instances.haproxy.clone(),
            vip_interface: config.instances.vip_interface.clone(),
            ip_bin: config.instances.ip.clone(),
            policy: policy::Policy::new(
                &config.instances.policy.allow_directives,
                &config.instances.policy.allow_paths,
            ),
            isolation,
        },
        metrics.reloads.clone(),
    ));

    let status_cache = Arc::new(StatusCache::from_pointee(Bytes::new()));
    let mut sampler = {
        let tls = tls.clone();
        Sampler::new(
            store.clone(),
            config.state_dir.clone(),
            Arc::new(move || tls.load().server_cert.not_after),
        )
    };
    // The first snapshot exists before the first request can arrive.
    let first = sampler.sample();
    status_cache.store(Arc::new(Bytes::from(
        serde_json::to_vec(&first).unwrap_or_default(),
    )));
    tokio::spawn(sampler.run(status_cache.clone(), config.status.interval.0));

    let reporter = config.controller.as_ref().map(|section| {
        let paths = config.tls_paths();
        Arc::new(reporter::Reporter::new(
            section,
            paths.client_ca.clone(),
            paths.cert.clone(),
            paths.key.clone(),
            appliance_id.clone(),
            status_cache.clone(),
        ))
    });
    let octavia = Arc::new(octavia::Octavia::new(
        &config.octavia,
        &appliance_id,
        &config.state_dir,
        &config.instances.haproxy,
        config.instances.allow_expired_certificates,
    ));
    let heartbeat = tokio::spawn(
        octavia::heartbeat::Sender {
            store: store.clone(),
            settings: octavia.heartbeat.clone(),
        }
        .run(),
    );
    let agent = Arc::new(Agent {
        tls: tls.clone(),
        tls_paths: config.tls_paths(),
        instances: instances.clone(),
        status: status_cache,
        metrics: metrics.clone(),
        appliance_id,
        max_body_bytes: config.limits.max_body_bytes,
        body_timeout: config.limits.body_timeout.0,
        certificate_lock: tokio::sync::Mutex::new(()),
        actor_clients: AllowList::new(
            config
                .server
                .actor_clients
                .as_deref()
                .unwrap_or(&[crate::controller::ca::CONTROLLER_CN.to_string()]),
        ),
        octavia,
    });
    let limits = ServerLimits {
        handshake_timeout: config.limits.handshake_timeout.0,
        header_timeout: config.limits.header_timeout.0,
        idle_timeout: config.limits.idle_timeout.0,
        shutdown_timeout: config.limits.shutdown_timeout.0,
        max_connections: config.limits.max_connections,
        max_header_bytes: config.limits.max_header_bytes,
    };
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let server = Server::start(
        listeners,
        tls.clone(),
        limits,
        metrics.transport.clone(),
        agent,
    );
    tracing::info!(listen = ?addrs, version = env!("CARGO_PKG_VERSION"), "agent serving");
    crate::transport::server::notify_ready();
    // Daemons that survived an agent restart are adopted; configured ones that are not
    // running (after a reboot) are started.
    tokio::task::spawn_blocking(move || {
        for line in instances.recover() {
            tracing::info!("recovery: {line}");
        }
    });

    let reporting = reporter.clone().map(|r| tokio::spawn(r.run()));

    let signals = wait_for_signals(&config, &tls, &metrics).await;
    if let Err(e) = signals {
        tracing::error!(error = %e, "cannot install signal handlers");
        return exit::FAILURE;
    }
    heartbeat.abort();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let (Some(task), Some(reporter)) = (reporting, reporter) {
        task.abort();
        match reporter
            .post(
                crate::callback::CallbackEvent::Stopped,
                Duration::from_secs(3),
            )
            .await
        {
            Ok(()) => tracing::info!("reported stopped"),
            Err(e) => tracing::warn!(error = %e, "cannot report stopped"),
        }
    }
    tracing::info!("shutting down: waiting for in-flight requests");
    if server.shutdown().await {
        tracing::info!("stopped");
    } else {
        tracing::warn!("stopped with connections still open at limits.shutdown_timeout");
    }
    exit::OK
}

/// Handles SIGHUP (reload TLS material) until SIGTERM or SIGINT arrives.
async fn wait_for_signals(
    config: &AgentConfig,
    tls: &Arc<ArcSwap<TlsMaterial>>,
    metrics: &AgentMetrics,
) -> std::io::Result<()> {
    crate::transport::server::until_terminated(|| async {
        let cfg = config.clone();
        match tokio::task::spawn_blocking(move || load_tls(&cfg)).await {
            Ok(Ok(material)) => {
                metrics.set_cert_expiry("agent", material.server_cert.not_after);
                tracing::info!(serial = %material.server_cert.serial, "SIGHUP: TLS material reloaded");
                tls.store(Arc::new(material));
            }
            Ok(Err(e)) => tracing::error!("SIGHUP: keeping the current TLS material: {e}"),
            Err(e) => tracing::error!("SIGHUP: reload failed: {e}"),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![cn.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn paths(dir: &Path) -> TlsPaths {
        TlsPaths {
            cert: dir.join("agent.crt"),
            key: dir.join("agent.key"),
            client_ca: dir.join("ca.crt"),
            server_ca: dir.join("ca.crt"),
            crls: vec![],
        }
    }

    fn installed(paths: &TlsPaths) -> (String, String) {
        (
            std::fs::read_to_string(&paths.cert).unwrap(),
            std::fs::read_to_string(&paths.key).unwrap(),
        )
    }

    #[test]
    fn an_interrupted_certificate_swap_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        let (old_cert, old_key) = pair("old");
        let (new_cert, new_key) = pair("new");
        std::fs::write(&paths.cert, &old_cert).unwrap();
        std::fs::write(&paths.key, &old_key).unwrap();
        // Crashed after the staged pair was committed and the key replaced, before the
        // certificate was.
        std::fs::write(
            staged_pair_path(&paths.cert),
            format!("{new_key}{new_cert}"),
        )
        .unwrap();
        std::fs::write(&paths.key, &new_key).unwrap();
        finish_pending_swap(&paths);
        let (cert, key) = installed(&paths);
        assert!(complete_pair(format!("{key}{cert}").as_bytes()).is_some());
        assert_eq!(
            crate::certs::parse_pem(cert.as_bytes()).unwrap().certs,
            crate::certs::parse_pem(new_cert.as_bytes()).unwrap().certs
        );
        assert!(!staged_pair_path(&paths.cert).exists());

        let (cert3, key3) = pair("third");
        write_certificate_pair(&paths, &cert3, &key3).unwrap();
        assert_eq!(installed(&paths), (cert3, key3));
        assert!(!staged_pair_path(&paths.cert).exists());
    }

    #[test]
    fn an_incomplete_or_mismatched_staged_pair_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        let (old_cert, old_key) = pair("old");
        let (new_cert, _) = pair("new");
        let (_, other_key) = pair("other");
        for staged in [
            format!("{other_key}{new_cert}"),
            new_cert.clone(),
            String::new(),
        ] {
            std::fs::write(&paths.cert, &old_cert).unwrap();
            std::fs::write(&paths.key, &old_key).unwrap();
            std::fs::write(staged_pair_path(&paths.cert), staged).unwrap();
            finish_pending_swap(&paths);
            assert_eq!(installed(&paths), (old_cert.clone(), old_key.clone()));
            assert!(!staged_pair_path(&paths.cert).exists());
        }
    }

    #[test]
    fn a_legacy_half_done_swap_is_rolled_forward_when_it_matches() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        let (old_cert, _) = pair("old");
        let (new_cert, new_key) = pair("new");
        // The earlier release renamed the key, then died before the certificate.
        std::fs::write(&paths.cert, &old_cert).unwrap();
        std::fs::write(&paths.key, &new_key).unwrap();
        std::fs::write(suffixed(&paths.cert, ".next"), &new_cert).unwrap();
        finish_pending_swap(&paths);
        let (cert, key) = installed(&paths);
        assert!(complete_pair(format!("{key}{cert}").as_bytes()).is_some());
        assert!(!suffixed(&paths.cert, ".next").exists());
    }
}
