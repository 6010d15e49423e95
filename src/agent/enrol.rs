//! `applianced agent --enrol URL --token TOKEN`: an appliance built elsewhere joins a
//! controller. The agent makes its own key (it never leaves the state directory), sends
//! a certificate signing request with the one-time token to the controller's appliance
//! listener (trusted by a pinned CA fingerprint or a CA file), waits until the request is
//! accepted, and writes its certificate, the CA and its configuration
//! (`STATE_DIR/agent.toml`, last, atomically); then it serves like any other agent. An
//! interrupted enrolment resumes: the key and the request's id are kept meanwhile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::certs;
use crate::controller::backend::toml_string;
use crate::fsutil::{ensure_dir, write_atomic};
use crate::transport::client::{Client, client_config, client_config_pinned, json_headers};

/// How the controller is recognised.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The SHA-256 fingerprint of its CA certificate (DER).
    Fingerprint([u8; 32]),
    /// A file holding its CA certificate.
    CaFile(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The controller's appliance listener, `https://HOST[:PORT]`.
    pub url: String,
    pub token: String,
    pub trust: Trust,
    /// Where the agent will serve (the first is its management address).
    pub listen: Vec<SocketAddr>,
    pub state_dir: PathBuf,
    pub run_dir: Option<PathBuf>,
    pub name: Option<String>,
}

/// The name of the configuration enrolment writes in the state directory.
pub const CONFIG_FILE: &str = "agent.toml";
/// Time between polls while the request waits.
const POLL: Duration = Duration::from_secs(2);

/// `sha256:HEX`, `HEX` or `HE:X:...` (either case) as 32 bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s)
        .replace(':', "");
    certs::unhex(&hex)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("--ca-fingerprint {s:?}: expected sha256: and 64 hex digits"))
}

#[derive(Serialize)]
struct Request<'a> {
    token: &'a str,
    csr: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Deserialize)]
struct Status {
    id: String,
    state: String,
    appliance_id: Option<String>,
    certificate: Option<String>,
    ca: String,
    heartbeat_interval_ms: u64,
}

/// The request waiting, kept so that an interrupted enrolment resumes.
#[derive(Serialize, Deserialize)]
struct Pending {
    url: String,
    id: String,
}

/// Enrols and returns the configuration file written; does nothing but return it when
/// the state directory holds one already (enrolled before).
pub async fn enrol(e: &Enrolment) -> Result<PathBuf, String> {
    let config_path = e.state_dir.join(CONFIG_FILE);
    if config_path.exists() {
        tracing::info!(config = %config_path.display(), "enrolled already");
        return Ok(config_path);
    }
    let listen = *e
        .listen
        .first()
        .ok_or("--enrol needs --listen ADDRESS:PORT (where the agent will serve)")?;
    let url = e.url.trim_end_matches('/').to_string();
    if !url.starts_with("https://") {
        return Err(format!("--enrol {url:?}: an https:// URL"));
    }
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |err: std::io::Error| format!("{p}: {err}")
    };
    let tls_dir = e.state_dir.join("tls");
    ensure_dir(&e.state_dir, 0o750).map_err(io(&e.state_dir))?;
    ensure_dir(&tls_dir, 0o700).map_err(io(&tls_dir))?;
    let key_path = tls_dir.join("agent.key");
    let key = match std::fs::read_to_string(&key_path) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem)
            .map_err(|err| format!("{}: {err}", key_path.display()))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate().map_err(|err| err.to_string())?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(io(&key_path))?;
            key
        }
        Err(err) => return Err(format!("{}: {err}", key_path.display())),
    };
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        e.name.as_deref().unwrap_or("applianced-agent"),
    );
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|err| format!("certificate signing request: {err}"))?;
    let tls = match &e.trust {
        Trust::Fingerprint(fp) => client_config_pinned(*fp)?,
        Trust::CaFile(path) => client_config(&certs::load_certs(path)?, None)?,
    };
    let client = Client::new(Some(Arc::new(tls)), Duration::from_secs(30));
    let pending_path = e.state_dir.join("enrolment.json");
    let resumed = std::fs::read(&pending_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
        .filter(|p| p.url == url);
    let id = match resumed {
        Some(p) => {
            tracing::info!(enrolment = %p.id, "resuming the enrolment");
            p.id
        }
        None => {
            let body = serde_json::to_vec(&Request {
                token: &e.token,
                csr: &csr,
                address: (!listen.ip().is_unspecified()).then(|| listen.ip().to_string()),
                port: listen.port(),
                name: e.name.as_deref(),
            })
            .map_err(|err| err.to_string())?;
            let reply = client
                .send(
                    Method::POST,
                    &format!("{url}/v1/enrolment-requests"),
                    json_headers(),
                    Bytes::from(body),
                )
                .await
                .map_err(|err| format!("cannot reach the controller: {err}"))?;
            if !matches!(reply.status, StatusCode::CREATED | StatusCode::ACCEPTED) {
                return Err(refusal(reply.status, &reply.body));
            }
            let status: Status = serde_json::from_slice(&reply.body)
                .map_err(|err| format!("the controller's answer: {err}"))?;
            let pending = serde_json::to_vec(&Pending {
                url: url.clone(),
                id: status.id.clone(),
            })
            .map_err(|err| err.to_string())?;
            write_atomic(&pending_path, &pending, 0o600).map_err(io(&pending_path))?;
            status.id
        }
    };
    let status = wait_accepted(&client, &url, &id).await?;
    let chain = status
        .certificate
        .as_deref()
        .ok_or("the controller accepted the request but sent no certificate")?;
    let appliance_id = status
        .appliance_id
        .clone()
        .ok_or("the controller accepted the request but named no appliance")?;
    check_answer(e, &key_path, chain, &status.ca)?;
    let crt_path = tls_dir.join("agent.crt");
    let ca_path = tls_dir.join("ca.crt");
    write_atomic(&crt_path, chain.as_bytes(), 0o644).map_err(io(&crt_path))?;
    write_atomic(&ca_path, status.ca.as_bytes(), 0o644).map_err(io(&ca_path))?;
    let config = render_config(e, &appliance_id, &url, status.heartbeat_interval_ms);
    write_atomic(&config_path, config.as_bytes(), 0o640).map_err(io(&config_path))?;
    let _ = std::fs::remove_file(&pending_path);
    tracing::info!(appliance = %appliance_id, config = %config_path.display(), "enrolled");
    Ok(config_path)
}

/// Polls the request until it is decided; transient failures are retried.
async fn wait_accepted(client: &Client, url: &str, id: &str) -> Result<Status, String> {
    let mut told = false;
    loop {
        match client
            .send(
                Method::GET,
                &format!("{url}/v1/enrolment-requests/{id}"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
        {
            Ok(reply) if reply.status == StatusCode::OK => {
                let status: Status = serde_json::from_slice(&reply.body)
                    .map_err(|err| format!("the controller's answer: {err}"))?;
                match status.state.as_str() {
                    "accepted" => return Ok(status),
                    "rejected" => return Err(format!("enrolment {id} was rejected by an admin")),
                    _ if !told => {
                        tracing::info!(enrolment = %id, "waiting for an admin to accept the enrolment");
                        told = true;
                    }
                    _ => {}
                }
            }
            Ok(reply) if reply.status == StatusCode::NOT_FOUND => {
                return Err(format!(
                    "the controller does not know enrolment {id} (any more)"
                ));
            }
            Ok(reply) => tracing::warn!(status = %reply.status, "polling the enrolment"),
            Err(err) => tracing::warn!(error = %err, "polling the enrolment"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The certificate is for our key and chains to the CA we trust; the CA sent is that
/// CA.
fn check_answer(e: &Enrolment, key_path: &Path, chain: &str, ca: &str) -> Result<(), String> {
    let chain = certs::parse_pem(chain.as_bytes())
        .map_err(|err| format!("the certificate: {err}"))?
        .certs;
    let ca_certs = certs::parse_pem(ca.as_bytes())
        .map_err(|err| format!("the CA: {err}"))?
        .certs;
    let ca_der = ca_certs
        .first()
        .ok_or("the controller sent no CA certificate")?;
    match &e.trust {
        Trust::Fingerprint(fp) => {
            if certs::sha256(ca_der) != *fp {
                return Err(
                    "the CA the controller sent does not have the pinned fingerprint".into(),
                );
            }
        }
        Trust::CaFile(path) => {
            if !certs::load_certs(path)?.iter().any(|c| c == ca_der) {
                return Err(format!(
                    "the CA the controller sent is not in {}",
                    path.display()
                ));
            }
        }
    }
    certs::check_chains_to(&chain, std::slice::from_ref(ca_der))
        .map_err(|err| format!("the certificate: {err}"))?;
    let key = certs::load_key(key_path)?;
    certs::certified_key(chain, key)
        .map_err(|err| format!("the certificate is not for this agent's key: {err}"))?;
    Ok(())
}

/// The controller's refusal in its own words (a problem document's detail).
fn refusal(status: StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    format!("the controller refused the enrolment ({status}): {detail}")
}

fn render_config(e: &Enrolment, appliance_id: &str, url: &str, heartbeat_ms: u64) -> String {
    let q = |s: &str| toml_string(s);
    let p = |p: &Path| toml_string(&p.display().to_string());
    let tls = e.state_dir.join("tls");
    let listen: Vec<String> = e.listen.iter().map(|a| q(&a.to_string())).collect();
    let run_dir = e
        .run_dir
        .as_ref()
        .map(|r| format!("run_dir = {}\n", p(r)))
        .unwrap_or_default();
    format!(
        "# Written by `applianced agent --enrol` for appliance {appliance_id}.\n\
         appliance_id = {id}\n\
         state_dir = {state}\n\
         {run_dir}\n\
         [server]\n\
         listen = [{listen}]\n\
         cert = {cert}\n\
         key = {key}\n\
         client_ca = {ca}\n\
         server_ca = {ca}\n\
         allowed_clients = [{controller}]\n\n\
         [controller]\n\
         url = {url}\n\
         ca = {ca}\n\
         heartbeat_interval = \"{heartbeat_ms}ms\"\n",
        id = q(appliance_id),
        state = p(&e.state_dir),
        listen = listen.join(", "),
        cert = p(&tls.join("agent.crt")),
        key = p(&tls.join("agent.key")),
        ca = p(&tls.join("ca.crt")),
        controller = q(crate::controller::ca::CONTROLLER_CN),
        url = q(url),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_in_the_usual_spellings() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        for s in [
            format!("sha256:{hex}"),
            hex.clone(),
            colons,
            format!("SHA256:{hex}"),
        ] {
            assert_eq!(parse_fingerprint(&s).unwrap(), [0xab; 32], "{s}");
        }
        assert!(parse_fingerprint("sha256:abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn the_configuration_written_loads() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrolment {
            url: "https://127.0.0.1:9444".into(),
            token: "t".into(),
            trust: Trust::Fingerprint([0; 32]),
            listen: vec!["127.0.0.9:9443".parse().unwrap()],
            state_dir: dir.path().join("state \"quoted\""),
            run_dir: Some(dir.path().join("run")),
            name: None,
        };
        let text = render_config(&e, "a-1", &e.url, 30_000);
        let tls = e.state_dir.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        for f in ["agent.crt", "agent.key", "ca.crt"] {
            std::fs::write(tls.join(f), "").unwrap();
        }
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let c = crate::config::agent::AgentConfig::load(
            &path,
            true,
            crate::config::agent::AgentOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.state_dir, e.state_dir);
        assert_eq!(c.server.listen, e.listen);
        assert_eq!(c.controller.unwrap().url, e.url);
    }
}
