//! OpenStack Octavia's amphora API 1.0, so that Octavia's controller
//! (`octavia.amphorae.drivers.haproxy.rest_api_driver`) drives this agent as it drives
//! its own amphora agent. Routes are parsed in [`routes`]; Octavia's files are mapped
//! onto the instance layout in [`translate`]; [`heartbeat`] sends the signed UDP
//! heartbeat its health manager expects.
//!
//! A load balancer is an instance of the native store: its id is the instance id, its
//! haproxy configuration goes through [`InstanceManager`] (the same `haproxy -c`,
//! directive policy, atomic writes, per-instance serialisation and rollback), its
//! certificate files are validated here (PEM parsed, key against certificate, chain
//! order, CRLs) before the manager writes them. Answers keep Octavia's status codes and
//! JSON bodies, since its client branches on them: `{"message", "details"}`, and
//! `{"error", "http_code"}` for unknown routes (404) and methods (405).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::transport::body::RequestBody;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use hyper::{Request, Response};
use serde_json::{Value, json};

use super::Agent;
use super::ids::{CertName, InstanceFile, InstanceId};
use super::instances::{InstanceError, InstanceManager};
use super::response::AgentError;
use crate::certs::{self, CertError, CertInfo};
use crate::config::agent::OctaviaSection;
use crate::fsutil::write_atomic;

pub mod heartbeat;
pub mod routes;
pub mod translate;

use heartbeat::HeartbeatSettings;
use routes::{FileVerb, Route, RouteError, VmOnly};

/// How much of an oversized body is read (and discarded) before the 400, in multiples of
/// `limits.max_body_bytes`.
const DRAIN_FACTOR: u64 = 4;

/// The API version Octavia's version discovery must find.
pub const API_VERSION: &str = "1.0";

/// The Octavia side of the agent.
pub struct Octavia {
    base_path: PathBuf,
    base_cert_dir: PathBuf,
    haproxy_bin: PathBuf,
    allow_invalid_dates: bool,
    /// The section as configured, before `PUT /1.0/config` changes.
    section: OctaviaSection,
    default_amphora_id: String,
    /// Where `PUT /1.0/config` keeps the last configuration Octavia sent.
    pushed_config: PathBuf,
    pub heartbeat: Arc<ArcSwap<Option<HeartbeatSettings>>>,
    haproxy_version: OnceLock<String>,
}

impl Octavia {
    pub fn new(
        section: &OctaviaSection,
        appliance_id: &str,
        state_dir: &Path,
        haproxy_bin: &Path,
        allow_invalid_dates: bool,
    ) -> Octavia {
        let octavia = Octavia {
            base_path: section.base_path.clone(),
            base_cert_dir: section.base_cert_dir.clone(),
            haproxy_bin: haproxy_bin.to_path_buf(),
            allow_invalid_dates,
            section: section.clone(),
            default_amphora_id: appliance_id.to_string(),
            pushed_config: state_dir.join("octavia-agent.conf"),
            heartbeat: Arc::new(ArcSwap::from_pointee(None)),
            haproxy_version: OnceLock::new(),
        };
        let pushed = std::fs::read_to_string(&octavia.pushed_config).ok();
        let settings = match pushed.as_deref().map(|t| octavia.settings_from(t)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(file = %octavia.pushed_config.display(), "ignoring the configuration Octavia pushed: {e}");
                octavia.settings_from("").unwrap_or(None)
            }
            None => octavia.settings_from("").unwrap_or(None),
        };
        octavia.heartbeat.store(Arc::new(settings));
        octavia
    }

    /// The heartbeat settings: the `[octavia]` section, overridden by what Octavia's
    /// agent configuration (`PUT /1.0/config`, oslo.config INI) says. None: no heartbeat.
    fn settings_from(&self, ini: &str) -> Result<Option<HeartbeatSettings>, String> {
        let s = &self.section;
        let mut amphora_id = s
            .amphora_id
            .clone()
            .unwrap_or_else(|| self.default_amphora_id.clone());
        let mut key = s.heartbeat_key.clone().unwrap_or_default();
        let mut interval = s.heartbeat_interval.0;
        let mut controllers = s.controller_ip_port_list.clone();
        let mut section = String::new();
        for (number, line) in ini.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {}: expected key = value", number + 1));
            };
            let (k, v) = (k.trim(), v.trim());
            match (section.as_str(), k) {
                ("amphora_agent", "amphora_id") => amphora_id = v.to_string(),
                ("health_manager", "heartbeat_key") => key = v.to_string(),
                ("health_manager", "heartbeat_interval") => {
                    let secs: u64 =
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0 && *n <= 3600)
                            .ok_or_else(|| {
                                format!(
                                    "heartbeat_interval: {v:?} is not a number of seconds (1..3600)"
                                )
                            })?;
                    interval = Duration::from_secs(secs);
                }
                ("health_manager", "controller_ip_port_list") => {
                    controllers = v
                        .split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(|a| {
                            a.parse().map_err(|_| {
                                format!("controller_ip_port_list: {a:?} is not IP:PORT")
                            })
                        })
                        .collect::<Result<_, _>>()?;
                }
                // The rest of Octavia's agent configuration has no meaning here.
                _ => {}
            }
        }
        if controllers.is_empty() {
            return Ok(None);
        }
        if key.is_empty() {
            return Err("heartbeat_key is required with controller_ip_port_list".into());
        }
        Ok(Some(HeartbeatSettings {
            amphora_id,
            key,
            interval,
            controllers,
        }))
    }

    fn layout<'a>(
        &'a self,
        lb_id: &'a str,
        certs_dir: &'a Path,
        run_dir: &'a Path,
    ) -> translate::Layout<'a> {
        translate::Layout {
            lb_id,
            base_path: &self.base_path,
            base_cert_dir: &self.base_cert_dir,
            certs_dir,
            run_dir,
            max_global_maxconn: max_global_maxconn(),
        }
    }

    /// haproxy's version as Octavia's templater parses it (`MAJOR.MINOR...`).
    fn haproxy_version(&self) -> String {
        self.haproxy_version
            .get_or_init(|| {
                let out =
                    super::daemons::run_captured(&self.haproxy_bin, &["-v"]).unwrap_or_else(|e| e);
                // "HAProxy version 2.6.12-1+deb12u1 2023/12/16 - https://haproxy.org/"
                out.split_whitespace()
                    .skip_while(|w| *w != "version")
                    .nth(1)
                    .unwrap_or("unknown")
                    .to_string()
            })
            .clone()
    }
}

/// Every way an API 1.0 request fails, with Octavia's status and body.
#[derive(Debug)]
pub enum OctaviaError {
    /// No such route (Flask's 404).
    NoRoute,
    /// The route exists, not with this method (Flask's 405).
    MethodNotAllowed,
    LoadBalancerNotFound(String),
    CertificateNotFound(String),
    BadFilename,
    /// 400 `Invalid request` with details (checker output, refused PEM, ...).
    InvalidRequest(String),
    UnknownAction(String),
    /// A daemon operation failed (500, `Error {verb}ing haproxy`).
    ActionFailed {
        verb: &'static str,
        details: String,
    },
    /// A route that only makes sense inside an amphora VM.
    VmOnly(VmOnly, String),
    /// Details go to the log only.
    Internal(String),
}

const VM_ONLY: &str = "not available here: applianced runs haproxy on its host, not inside an amphora VM (no amphora network namespace, keepalived or LVS)";

impl OctaviaError {
    fn status(&self) -> StatusCode {
        match self {
            OctaviaError::NoRoute
            | OctaviaError::LoadBalancerNotFound(_)
            | OctaviaError::CertificateNotFound(_) => StatusCode::NOT_FOUND,
            OctaviaError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            OctaviaError::BadFilename
            | OctaviaError::InvalidRequest(_)
            | OctaviaError::UnknownAction(_) => StatusCode::BAD_REQUEST,
            OctaviaError::VmOnly(which, _) => match which {
                VmOnly::GetInterface | VmOnly::InterfaceRules => StatusCode::NOT_FOUND,
                VmOnly::PlugVip
                | VmOnly::PlugNetwork
                | VmOnly::VrrpUpload
                | VmOnly::VrrpAction
                | VmOnly::UdpListener => StatusCode::INTERNAL_SERVER_ERROR,
            },
            OctaviaError::ActionFailed { .. } | OctaviaError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A stable word for the request log.
    fn code(&self) -> &'static str {
        match self {
            OctaviaError::NoRoute => "not_found",
            OctaviaError::MethodNotAllowed => "method_not_allowed",
            OctaviaError::LoadBalancerNotFound(_) => "loadbalancer_not_found",
            OctaviaError::CertificateNotFound(_) => "certificate_not_found",
            OctaviaError::BadFilename => "bad_filename",
            OctaviaError::InvalidRequest(_) => "invalid_request",
            OctaviaError::UnknownAction(_) => "unknown_action",
            OctaviaError::ActionFailed { .. } => "action_failed",
            OctaviaError::VmOnly(..) => "vm_only",
            OctaviaError::Internal(_) => "internal_error",
        }
    }

    fn body(&self) -> Value {
        let flask = |code: u16, text: &str| json!({ "error": text, "http_code": code });
        match self {
            OctaviaError::NoRoute => flask(
                404,
                "404 Not Found: The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.",
            ),
            OctaviaError::MethodNotAllowed => flask(
                405,
                "405 Method Not Allowed: The method is not allowed for the requested URL.",
            ),
            OctaviaError::LoadBalancerNotFound(id) => json!({
                "message": "Loadbalancer Not Found",
                "details": format!("No loadbalancer with UUID: {id}"),
            }),
            OctaviaError::CertificateNotFound(name) => json!({
                "message": "Certificate Not Found",
                "details": format!("No certificate with filename: {name}"),
            }),
            OctaviaError::BadFilename => json!({ "message": "Filename has wrong format" }),
            OctaviaError::InvalidRequest(details) => {
                json!({ "message": "Invalid request", "details": details })
            }
            OctaviaError::UnknownAction(action) => json!({
                "message": "Invalid Request",
                "details": format!("Unknown action: {action}"),
            }),
            OctaviaError::ActionFailed { verb, details } => json!({
                "message": format!("Error {verb}ing haproxy"),
                "details": details,
            }),
            OctaviaError::VmOnly(which, id) => {
                let message = match which {
                    VmOnly::PlugVip => "Error plugging VIP".to_string(),
                    VmOnly::PlugNetwork => "Error plugging network".to_string(),
                    VmOnly::GetInterface | VmOnly::InterfaceRules => {
                        "Error interface not found for IP address".to_string()
                    }
                    VmOnly::VrrpUpload => "Error enabling octavia-keepalived service".to_string(),
                    VmOnly::VrrpAction => "Failed to manage octavia-keepalived service".to_string(),
                    VmOnly::UdpListener if id.is_empty() => {
                        "Error enabling octavia-keepalivedlvs service".to_string()
                    }
                    VmOnly::UdpListener => "UDP Listener Not Found".to_string(),
                };
                json!({ "message": message, "details": VM_ONLY })
            }
            OctaviaError::Internal(_) => {
                json!({ "message": "Internal error", "details": "see the agent's log" })
            }
        }
    }
}

impl From<InstanceError> for OctaviaError {
    fn from(e: InstanceError) -> Self {
        match e {
            // Callers that know the load balancer id map this themselves.
            InstanceError::NotFound => OctaviaError::LoadBalancerNotFound(String::new()),
            InstanceError::InvalidConfig { output } => OctaviaError::InvalidRequest(output),
            // Refused like an invalid configuration, which Octavia's client knows.
            InstanceError::ForbiddenDirective(violations) => OctaviaError::InvalidRequest(
                violations
                    .iter()
                    .map(|v| format!("forbidden directive: {v}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            InstanceError::ApplyFailed { output } => OctaviaError::ActionFailed {
                verb: "reload",
                details: output,
            },
            InstanceError::CertificateInUse { output } => OctaviaError::InvalidRequest(output),
            InstanceError::InvalidCustom503(m) => OctaviaError::InvalidRequest(m),
            InstanceError::TooLarge(n) => {
                OctaviaError::InvalidRequest(format!("larger than the limit of {n} bytes"))
            }
            InstanceError::Certificate(c) => OctaviaError::InvalidRequest(c.to_string()),
            InstanceError::Io(io) => OctaviaError::Internal(io.to_string()),
        }
    }
}

/// A successful answer.
pub struct OctaviaReply {
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    etag: Option<String>,
}

impl OctaviaReply {
    fn json(status: StatusCode, value: Value) -> OctaviaReply {
        OctaviaReply {
            status,
            body: Bytes::from(value.to_string()),
            content_type: "application/json",
            etag: None,
        }
    }

    fn ok(status: StatusCode) -> OctaviaReply {
        OctaviaReply::json(status, json!({ "message": "OK" }))
    }

    fn with_etag(mut self, etag: String) -> OctaviaReply {
        self.etag = Some(etag);
        self
    }
}

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    certs::hex(&Md5::digest(data))
}

/// What kind of certificate-directory file a valid upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFileKind {
    /// Private key, certificate and chain (a listener's or a pool's client certificate).
    Bundle,
    /// Certificates only (a CA bundle) and/or CRLs.
    Trust,
}

/// Validates a PEM file Octavia uploads to a load balancer's certificate directory.
/// Octavia's own agent writes whatever it gets; here a broken file is refused before
/// haproxy ever reads it. Returns the kind and, for a bundle outside its validity
/// window that is allowed, a warning.
pub fn check_pem_file(
    body: &[u8],
    allow_invalid_dates: bool,
    now: i64,
) -> Result<(CertFileKind, Option<String>), CertError> {
    let mut pem = certs::parse_pem(body)?;
    let infos = pem
        .certs
        .iter()
        .map(CertInfo::parse)
        .collect::<Result<Vec<_>, _>>()?;
    for crl in &pem.crls {
        x509_parser::parse_x509_crl(crl)
            .map_err(|e| CertError::InvalidCertificate(format!("CRL: {e}")))?;
    }
    match pem.keys.len() {
        0 if pem.certs.is_empty() && pem.crls.is_empty() => Err(CertError::NoCertificate),
        0 => Ok((CertFileKind::Trust, None)),
        1 => {
            let key = pem.keys.remove(0);
            if pem.certs.is_empty() {
                return Err(CertError::NoCertificate);
            }
            certs::certified_key(pem.certs.clone(), key)?;
            certs::check_chain_order(&pem.certs)?;
            let warning = match infos[0].check_validity(now) {
                Ok(()) => None,
                Err(e) if allow_invalid_dates => Some(e.to_string()),
                Err(e) => return Err(e),
            };
            Ok((CertFileKind::Bundle, warning))
        }
        _ => Err(CertError::MultipleKeys),
    }
}

/// A certificate-directory file name as Octavia's agent accepts it (`(\w.)+pem`), and
/// as a file name here.
fn cert_name(filename: &str) -> Result<CertName, OctaviaError> {
    CertName::parse(filename)
        .filter(|n| n.as_str().len() > 4 && n.as_str().ends_with(".pem"))
        .ok_or(OctaviaError::BadFilename)
}

/// Octavia's load balancer ids are UUIDs, and only those name an instance here.
fn lb(lb_id: &str) -> Option<InstanceId> {
    InstanceId::parse(lb_id)
}

fn amphora_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Agent {
    /// Answers one API 1.0 request: the response, the stable code and the route label
    /// for the request log.
    pub(super) async fn octavia_request(
        &self,
        method: &Method,
        path: &str,
        req: Request<RequestBody>,
    ) -> (Response<Full<Bytes>>, &'static str, &'static str) {
        let route = routes::parse(method, path);
        let label = route.as_ref().map(Route::label).unwrap_or("(unknown)");
        let result = match route {
            Ok(route) => self.octavia_dispatch(route, req).await,
            Err(RouteError::NotFound) => Err(OctaviaError::NoRoute),
            Err(RouteError::MethodNotAllowed) => Err(OctaviaError::MethodNotAllowed),
        };
        let (reply, code) = match result {
            Ok(reply) => (reply, "ok"),
            Err(e) => {
                if let OctaviaError::Internal(detail) = &e {
                    tracing::error!(%method, %path, error = %detail, "internal error");
                }
                (OctaviaReply::json(e.status(), e.body()), e.code())
            }
        };
        let mut response = Response::new(Full::new(if *method == Method::HEAD {
            Bytes::new()
        } else {
            reply.body
        }));
        *response.status_mut() = reply.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(reply.content_type),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(etag) = reply.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
            headers.insert(header::ETAG, etag);
        }
        (response, code, label)
    }

    /// Reads the body within the agent's size and time limits. Octavia's client reads a
    /// 413 as success, so a body over the limit is a 400; and since that client sends the
    /// whole body before it reads an answer, up to [`DRAIN_FACTOR`] times the limit is
    /// read and discarded first (never held), so that it sees the 400 rather than a reset.
    async fn octavia_body(&self, req: Request<RequestBody>) -> Result<Bytes, OctaviaError> {
        use http_body_util::BodyExt;
        let max = self.max_body_bytes;
        let too_large = || {
            OctaviaError::InvalidRequest(format!(
                "Request body larger than the limit of {max} bytes"
            ))
        };
        let drain_cap = max.saturating_mul(DRAIN_FACTOR);
        let mut body = req.into_body();
        let mut kept = bytes::BytesMut::new();
        let mut seen: u64 = 0;
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| OctaviaError::InvalidRequest(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    seen = seen.saturating_add(data.len() as u64);
                    if seen > drain_cap {
                        return Err(too_large());
                    }
                    if seen <= max {
                        kept.extend_from_slice(&data);
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.body_timeout, read).await {
            Err(_) => Err(OctaviaError::InvalidRequest(
                "Request body not received in time".into(),
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) if seen > max => Err(too_large()),
            Ok(Ok(())) => Ok(kept.freeze()),
        }
    }

    /// Runs manager work on the blocking pool.
    async fn octavia_op<T, F>(&self, f: F) -> Result<T, OctaviaError>
    where
        T: Send + 'static,
        F: FnOnce(&InstanceManager, &Octavia) -> Result<T, OctaviaError> + Send + 'static,
    {
        let manager = self.instances.clone();
        let octavia = self.octavia.clone();
        tokio::task::spawn_blocking(move || f(&manager, &octavia))
            .await
            .map_err(|e| OctaviaError::Internal(format!("worker failed: {e}")))?
    }

    async fn octavia_dispatch(
        &self,
        route: Route,
        req: Request<RequestBody>,
    ) -> Result<OctaviaReply, OctaviaError> {
        match route {
            Route::VersionDiscovery => Ok(OctaviaReply::json(
                StatusCode::OK,
                json!({ "api_version": API_VERSION }),
            )),
            Route::PutHaproxy { amphora_id, lb_id } => {
                let Some(id) = lb(&lb_id) else {
                    return Err(OctaviaError::InvalidRequest(format!(
                        "load balancer id {lb_id:?} is not a UUID"
                    )));
                };
                if !amphora_id_ok(&amphora_id) {
                    return Err(OctaviaError::InvalidRequest(format!(
                        "amphora id {amphora_id:?} has characters other than letters, digits, '-', '_' and '.'"
                    )));
                }
                let body = self.octavia_body(req).await?;
                let etag = md5_hex(&body);
                self.octavia_op(move |m, o| {
                    let text = std::str::from_utf8(&body).map_err(|e| {
                        OctaviaError::InvalidRequest(format!("not UTF-8 text: {e}"))
                    })?;
                    let certs_dir = m.certs_dir(&id);
                    let run_dir = m.store().run_dir(&id);
                    let translated =
                        translate::haproxy_config(text, &o.layout(&lb_id, &certs_dir, &run_dir))
                            .map_err(|e| OctaviaError::InvalidRequest(e.to_string()))?;
                    save_server_state(&run_dir);
                    m.put_file(&id, &InstanceFile::Haproxy, translated.as_bytes())
                        .map_err(|e| match e {
                            InstanceError::ApplyFailed { output } => OctaviaError::ActionFailed {
                                verb: "reload",
                                details: output,
                            },
                            other => other.into(),
                        })?;
                    Ok(OctaviaReply::ok(StatusCode::ACCEPTED).with_etag(etag))
                })
                .await
            }
            Route::GetHaproxy { lb_id } => {
                let Some(id) = lb(&lb_id) else {
                    return Err(OctaviaError::LoadBalancerNotFound(lb_id));
                };
                self.octavia_op(move |m, _| match m.get_file(&id, &InstanceFile::Haproxy) {
                    Ok(data) => {
                        let etag = md5_hex(&data);
                        Ok(OctaviaReply {
                            status: StatusCode::OK,
                            body: Bytes::from(data),
                            content_type: "text/plain; charset=UTF-8",
                            etag: Some(etag),
                        })
                    }
                    Err(InstanceError::NotFound) => Err(OctaviaError::LoadBalancerNotFound(lb_id)),
                    Err(e) => Err(e.into()),
                })
                .await
            }
            Route::Action { lb_id, action } => {
                let action = action.to_ascii_lowercase();
                let verb: &'static str = match action.as_str() {
                    "start" => "start",
                    "stop" => "stop",
                    "reload" => "reload",
                    _ => return Err(OctaviaError::UnknownAction(action)),
                };
                let Some(id) = lb(&lb_id) else {
                    return Err(OctaviaError::LoadBalancerNotFound(lb_id));
                };
                self.octavia_op(move |m, _| {
                    let result = match verb {
                        "stop" => m.stop_haproxy(&id),
                        _ => {
                            save_server_state(&m.store().run_dir(&id));
                            m.reload_haproxy(&id)
                        }
                    };
                    match result {
                        Ok(_) => {}
                        Err(InstanceError::NotFound) => {
                            return Err(OctaviaError::LoadBalancerNotFound(lb_id));
                        }
                        Err(InstanceError::InvalidConfig { output })
                        | Err(InstanceError::ApplyFailed { output }) => {
                            return Err(OctaviaError::ActionFailed {
                                verb,
                                details: output,
                            });
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let details = match verb {
                        "start" => format!(
                            "Configuration file is valid\nhaproxy daemon for {lb_id} started"
                        ),
                        _ => format!("Listener {lb_id} {verb}ed"),
                    };
                    Ok(OctaviaReply::json(
                        StatusCode::ACCEPTED,
                        json!({ "message": "OK", "details": details }),
                    ))
                })
                .await
            }
            Route::Listeners => self.octavia_op(|m, _| listeners(m)).await,
            Route::DeleteLoadBalancer { lb_id } => {
                let Some(id) = lb(&lb_id) else {
                    return Ok(OctaviaReply::ok(StatusCode::OK));
                };
                self.octavia_op(move |m, _| match m.delete_instance(&id) {
                    Ok(_) | Err(InstanceError::NotFound) => Ok(OctaviaReply::ok(StatusCode::OK)),
                    Err(InstanceError::ApplyFailed { output }) => Err(OctaviaError::ActionFailed {
                        verb: "stopp",
                        details: output,
                    }),
                    Err(e) => Err(e.into()),
                })
                .await
            }
            Route::CertificateFile {
                verb,
                lb_id,
                filename,
            } => {
                self.octavia_certificate_file(verb, lb_id, filename, req)
                    .await
            }
            Route::PutAgentCertificate => {
                let body = self.octavia_body(req).await?;
                match self.put_agent_certificate(body).await {
                    Ok(_) => Ok(OctaviaReply::ok(StatusCode::ACCEPTED)),
                    Err(AgentError::Certificate(e)) => {
                        Err(OctaviaError::InvalidRequest(e.to_string()))
                    }
                    Err(e) => Err(OctaviaError::Internal(e.to_string())),
                }
            }
            Route::PutConfig => {
                let body = self.octavia_body(req).await?;
                self.octavia_op(move |_, o| {
                    let text = std::str::from_utf8(&body).map_err(|e| {
                        OctaviaError::InvalidRequest(format!("not UTF-8 text: {e}"))
                    })?;
                    let settings = o
                        .settings_from(text)
                        .map_err(OctaviaError::InvalidRequest)?;
                    write_atomic(&o.pushed_config, &body, 0o600)
                        .map_err(|e| OctaviaError::Internal(e.to_string()))?;
                    o.heartbeat.store(Arc::new(settings));
                    Ok(OctaviaReply::ok(StatusCode::ACCEPTED))
                })
                .await
            }
            Route::Info => {
                self.octavia_op(|_, o| {
                    Ok(OctaviaReply::json(
                        StatusCode::OK,
                        json!({
                            "hostname": hostname(),
                            "haproxy_version": o.haproxy_version(),
                            "api_version": API_VERSION,
                        }),
                    ))
                })
                .await
            }
            Route::Details => self.octavia_op(details).await,
            Route::VmOnly(which) => {
                // The GET of a UDP listener asks for one that cannot exist here.
                let id = match (which, req.method() == Method::GET) {
                    (VmOnly::UdpListener, true) => "-".to_string(),
                    _ => String::new(),
                };
                Err(OctaviaError::VmOnly(which, id))
            }
        }
    }

    async fn octavia_certificate_file(
        &self,
        verb: FileVerb,
        lb_id: String,
        filename: String,
        req: Request<RequestBody>,
    ) -> Result<OctaviaReply, OctaviaError> {
        let name = cert_name(&filename)?;
        let id = lb(&lb_id);
        match (verb, id) {
            (FileVerb::Get, None) => Err(OctaviaError::CertificateNotFound(filename)),
            (FileVerb::Delete, None) => Ok(OctaviaReply::ok(StatusCode::OK)),
            (FileVerb::Put, None) => Err(OctaviaError::InvalidRequest(format!(
                "load balancer id {lb_id:?} is not a UUID"
            ))),
            (FileVerb::Get, Some(id)) => {
                self.octavia_op(move |m, _| {
                    match m.get_file(&id, &InstanceFile::Certificate(name)) {
                        Ok(data) => {
                            let sum = md5_hex(&data);
                            Ok(OctaviaReply::json(StatusCode::OK, json!({ "md5sum": sum }))
                                .with_etag(sum))
                        }
                        Err(InstanceError::NotFound) => {
                            Err(OctaviaError::CertificateNotFound(filename))
                        }
                        Err(e) => Err(e.into()),
                    }
                })
                .await
            }
            (FileVerb::Delete, Some(id)) => {
                self.octavia_op(move |m, _| {
                    m.remove_certificate_file(&id, &name)?;
                    Ok(OctaviaReply::ok(StatusCode::OK))
                })
                .await
            }
            (FileVerb::Put, Some(id)) => {
                let body = self.octavia_body(req).await?;
                let etag = md5_hex(&body);
                self.octavia_op(move |m, o| {
                    let stored = if translate::is_crt_list(&body) {
                        let certs_dir = m.certs_dir(&id);
                        let run_dir = m.store().run_dir(&id);
                        let text = String::from_utf8_lossy(&body);
                        translate::crt_list(&text, &o.layout(&lb_id, &certs_dir, &run_dir))
                            .map_err(|e| OctaviaError::InvalidRequest(e.to_string()))?
                            .into_bytes()
                    } else {
                        let (_, warning) =
                            check_pem_file(&body, o.allow_invalid_dates, certs::now_unix())
                                .map_err(|e| {
                                    OctaviaError::InvalidRequest(format!(
                                        "{filename}: {e} ({})",
                                        e.code()
                                    ))
                                })?;
                        if let Some(w) = warning {
                            tracing::warn!(instance = %id, file = %filename, "certificate accepted outside its validity: {w}");
                        }
                        body.to_vec()
                    };
                    m.put_certificate_file(&id, &name, &stored)?;
                    Ok(OctaviaReply::ok(StatusCode::OK).with_etag(etag))
                })
                .await
            }
        }
    }
}

/// haproxy needs about 2.5 file descriptors per connection of its global `maxconn`
/// (both sides, plus listeners and checks); keep within the hard limit it inherits.
fn max_global_maxconn() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024);
    (hard.saturating_mul(2) / 5).saturating_sub(500).max(100)
}

/// Saves the servers' state of a running haproxy before it reloads (what Octavia's
/// agent does), for the `load-server-state-from-file` its configurations ask for.
fn save_server_state(run_dir: &Path) {
    let socket = run_dir.join(translate::STATS_SOCKET);
    if !socket.exists() {
        return;
    }
    let saved = heartbeat::query_socket(&socket, "show servers state").and_then(|state| {
        write_atomic(
            &run_dir.join(translate::SERVER_STATE),
            state.as_bytes(),
            0o640,
        )
    });
    if let Err(e) = saved {
        // haproxy reloads without it, as with Octavia's agent.
        tracing::warn!(socket = %socket.display(), error = %e, "cannot save the servers' state");
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Octavia's listener list: every frontend of every load balancer configured through
/// this API, `ACTIVE`, typed by its mode (`TERMINATED_HTTPS` when it binds with a
/// certificate).
fn listeners(m: &InstanceManager) -> Result<OctaviaReply, OctaviaError> {
    let store = m.store();
    let mut out = Vec::new();
    for id in store
        .list()
        .map_err(|e| OctaviaError::Internal(e.to_string()))?
    {
        let Ok(config) = m.get_file(&id, &InstanceFile::Haproxy) else {
            continue;
        };
        let config = String::from_utf8_lossy(&config);
        if !config.contains(translate::STATS_SOCKET) {
            continue;
        }
        for (name, kind) in frontends(&config) {
            out.push(json!({ "status": "ACTIVE", "uuid": name, "type": kind }));
        }
    }
    Ok(OctaviaReply::json(StatusCode::OK, Value::Array(out)))
}

/// The frontends of an haproxy configuration with Octavia's listener type.
fn frontends(config: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String, bool)> = None;
    let finish = |c: Option<(String, String, bool)>, out: &mut Vec<(String, String)>| {
        if let Some((name, mode, tls)) = c {
            let kind = if tls { "TERMINATED_HTTPS".into() } else { mode };
            out.push((name, kind));
        }
    };
    for line in config.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let is_section = !line.starts_with(char::is_whitespace) && !words.is_empty();
        if is_section {
            finish(current.take(), &mut out);
            if let ["frontend", name, ..] = words.as_slice() {
                current = Some(((*name).to_string(), "TCP".into(), false));
            }
            continue;
        }
        if let Some((_, mode, tls)) = current.as_mut() {
            match words.as_slice() {
                ["mode", m, ..] => *mode = m.to_ascii_uppercase(),
                ["bind", rest @ ..] if rest.contains(&"ssl") => *tls = true,
                _ => {}
            }
        }
    }
    finish(current.take(), &mut out);
    out
}

/// `GET /1.0/details`: what Octavia's agent reports, from this host.
fn details(m: &InstanceManager, o: &Octavia) -> Result<OctaviaReply, OctaviaError> {
    let store = m.store();
    let ids = store
        .list()
        .map_err(|e| OctaviaError::Internal(e.to_string()))?;
    let mut listener_ids = Vec::new();
    let mut running = 0;
    for id in &ids {
        if let Ok(config) = m.get_file(id, &InstanceFile::Haproxy) {
            let config = String::from_utf8_lossy(&config);
            if config.contains(translate::STATS_SOCKET) {
                listener_ids.extend(frontends(&config).into_iter().map(|(n, _)| n));
            }
        }
        if super::store::running_pid(
            &store.pid_file(id, super::store::Daemon::Haproxy),
            "haproxy",
        )
        .is_some()
        {
            running += 1;
        }
    }
    listener_ids.sort();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<&str> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| cpu.get(i).copied().unwrap_or("0").to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let disk = nix::sys::statvfs::statvfs("/").ok();
    let (used, available) = disk
        .map(|s| {
            let frsize = s.fragment_size();
            (
                s.blocks().saturating_sub(s.blocks_free()) * frsize,
                s.blocks_available() * frsize,
            )
        })
        .unwrap_or((0, 0));
    Ok(OctaviaReply::json(
        StatusCode::OK,
        json!({
            "hostname": hostname(),
            "haproxy_version": o.haproxy_version(),
            "api_version": API_VERSION,
            "networks": {},
            "active": true,
            "haproxy_count": running,
            "cpu_count": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cpu": {
                "total": field(1).parse::<u64>().unwrap_or(0)
                    + field(2).parse::<u64>().unwrap_or(0)
                    + field(3).parse::<u64>().unwrap_or(0)
                    + field(4).parse::<u64>().unwrap_or(0),
                "user": field(1),
                "system": field(3),
                "soft_irq": field(7),
            },
            "memory": {
                "total": mem("MemTotal"),
                "free": mem("MemFree"),
                "buffers": mem("Buffers"),
                "cached": mem("Cached"),
                "swap_used": mem("SwapCached"),
                "shared": mem("Shmem"),
                "slab": mem("Slab"),
            },
            "disk": { "used": used, "available": available },
            "load": load,
            "active_tuned_profiles": "",
            "topology": "SINGLE",
            "topology_status": "OK",
            "listeners": listener_ids,
            "packages": {},
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, IssueRequest, KeyType};

    #[test]
    fn octavia_error_bodies() {
        let e = OctaviaError::NoRoute;
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.body()["http_code"], 404);
        let e = OctaviaError::MethodNotAllowed;
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.body()["http_code"], 405);
        let e = OctaviaError::LoadBalancerNotFound("x".into());
        assert_eq!(e.body()["message"], "Loadbalancer Not Found");
        assert_eq!(e.body()["details"], "No loadbalancer with UUID: x");
        let e = OctaviaError::InvalidRequest("haproxy says no".into());
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["message"], "Invalid request");
        let e = OctaviaError::Internal("/secret/path".into());
        assert!(!e.body().to_string().contains("secret"));
        assert_eq!(
            OctaviaError::VmOnly(VmOnly::PlugVip, String::new()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn settings_from_octavia_agent_config() {
        let section = OctaviaSection {
            heartbeat_key: Some("k0".into()),
            ..Default::default()
        };
        let o = Octavia::new(
            &section,
            "appliance-1",
            Path::new("/nonexistent"),
            Path::new("haproxy"),
            true,
        );
        assert_eq!(o.settings_from(""), Ok(None));
        let s = o
            .settings_from(
                "[DEFAULT]\ndebug = False\n[amphora_agent]\namphora_id = amp-9\n[health_manager]\ncontroller_ip_port_list = 127.0.0.1:5555, [::1]:5556\nheartbeat_interval = 3\nheartbeat_key = secret\n",
            )
            .unwrap()
            .unwrap();
        assert_eq!(s.amphora_id, "amp-9");
        assert_eq!(s.key, "secret");
        assert_eq!(s.interval, Duration::from_secs(3));
        assert_eq!(
            s.controllers,
            vec![
                "127.0.0.1:5555".parse().unwrap(),
                "[::1]:5556".parse().unwrap()
            ]
        );
        let s = o
            .settings_from("[health_manager]\ncontroller_ip_port_list = 127.0.0.1:5555\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.amphora_id.as_str(), s.key.as_str()),
            ("appliance-1", "k0")
        );
        for bad in [
            "[health_manager]\ncontroller_ip_port_list = nowhere\n",
            "[health_manager]\nheartbeat_interval = 0\n",
            "just words\n",
        ] {
            assert!(o.settings_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pem_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "test CA", 365, KeyType::EcdsaP256).unwrap();
        let leaf = ca.issue(&IssueRequest::server("www.example.com")).unwrap();
        let other = ca.issue(&IssueRequest::server("other")).unwrap();
        let crl = ca.crl_pem(1).unwrap();
        assert_eq!(
            check_pem_file(crl.as_bytes(), true, certs::now_unix())
                .unwrap()
                .0,
            CertFileKind::Trust
        );
        let now = certs::now_unix();
        // Octavia's build_pem: certificate, chain, then key.
        let bundle = format!("{}{}", leaf.cert_pem, leaf.key_pem);
        assert_eq!(
            check_pem_file(bundle.as_bytes(), true, now).unwrap().0,
            CertFileKind::Bundle
        );
        assert_eq!(
            check_pem_file(ca.cert_pem().as_bytes(), true, now)
                .unwrap()
                .0,
            CertFileKind::Trust
        );
        let mismatch = format!("{}{}", leaf.cert_pem, other.key_pem);
        assert_eq!(
            check_pem_file(mismatch.as_bytes(), true, now),
            Err(CertError::KeyMismatch)
        );
        assert_eq!(
            check_pem_file(leaf.key_pem.as_bytes(), true, now),
            Err(CertError::NoCertificate)
        );
        assert_eq!(
            check_pem_file(b"garbage", true, now),
            Err(CertError::NoCertificate)
        );
        let truncated = &bundle.as_bytes()[..bundle.len() / 3];
        assert!(check_pem_file(truncated, true, now).is_err());
    }

    #[test]
    fn names_and_frontends() {
        assert!(cert_name("0b5a1c2e-d1f2-4f3e-9a8b-1c2d3e4f5a6b.pem").is_ok());
        assert!(cert_name("ab12.pem").is_ok());
        for bad in ["x.crt", ".pem", "../x.pem", "a/b.pem", ""] {
            assert!(cert_name(bad).is_err(), "{bad}");
        }
        let f = frontends(
            "global\n  daemon\nfrontend a\n  mode http\n  bind 1.2.3.4:80\nfrontend b\n  bind 1.2.3.4:443 ssl crt-list /x\n  mode http\nbackend c\n  mode tcp\nfrontend d\n  bind :22\n",
        );
        assert_eq!(
            f,
            vec![
                ("a".into(), "HTTP".into()),
                ("b".into(), "TERMINATED_HTTPS".into()),
                ("d".into(), "TCP".into())
            ]
        );
    }
}
