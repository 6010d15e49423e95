//! The controller's certificate authority (the `applianced pki` layout, created on first
//! start): appliance certificates (CN = appliance id, SAN = its address, server and
//! client use), the controller's own client certificate for calling agents, listener
//! certificates when the configuration names none, and the CRL agents and the
//! `appliance` zone load.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;

use crate::certs;
use crate::pki::{Ca, DEFAULT_CA_DAYS, IssueRequest, Issued, KeyType, PkiError};
use crate::transport::client::client_config;

/// The CN of the controller's client certificate; agents spawned by the controller
/// accept no other client.
pub const CONTROLLER_CN: &str = "applianced-controller";
/// Validity of the CRL written after each revocation (re-signed at every start).
const CRL_DAYS: u32 = 30;

pub struct ControllerCa {
    ca: Ca,
    dir: PathBuf,
    certificate_days: u32,
    rotate_before_days: u32,
}

impl ControllerCa {
    /// Loads the CA in `dir`, creating it on first use, and re-signs the CRL.
    pub fn open(
        dir: &Path,
        certificate_days: u32,
        rotate_before_days: u32,
    ) -> Result<ControllerCa, PkiError> {
        let ca = if dir.join("ca.crt").exists() {
            Ca::load(dir)?
        } else {
            tracing::info!(dir = %dir.display(), "creating the controller CA");
            Ca::init(
                dir,
                "applianced controller CA",
                DEFAULT_CA_DAYS,
                KeyType::EcdsaP256,
            )?
        };
        let this = ControllerCa {
            ca,
            dir: dir.to_path_buf(),
            certificate_days,
            rotate_before_days,
        };
        this.write_crl()?;
        Ok(this)
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn write_crl(&self) -> Result<(), PkiError> {
        let crl = self.ca.crl_pem(CRL_DAYS)?;
        let path = self.crl_path();
        crate::fsutil::write_atomic(&path, crl.as_bytes(), 0o644)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))
    }

    /// An appliance's certificate: server (its agent) and client (its callbacks).
    pub fn issue_appliance(&self, id: &str, address: &str) -> Result<Issued, PkiError> {
        self.ca.issue(&self.appliance_request(id, address))
    }

    /// [`ControllerCa::issue_appliance`] for a key the appliance keeps (`spki`: its
    /// SubjectPublicKeyInfo, DER): an enrolled appliance's. The result has no key.
    pub fn issue_appliance_for_key(
        &self,
        id: &str,
        address: &str,
        spki: &[u8],
    ) -> Result<Issued, PkiError> {
        self.ca
            .issue_for_key(&self.appliance_request(id, address), spki)
    }

    fn appliance_request(&self, id: &str, address: &str) -> IssueRequest {
        let mut req = IssueRequest::server(id);
        req.client = true;
        req.sans = vec![address.to_string()];
        req.days = self.certificate_days;
        req
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The SHA-256 fingerprint of the CA certificate (DER), lower-case hex: what an
    /// enrolling appliance pins.
    pub fn fingerprint(&self) -> String {
        certs::sha256_hex(self.ca.cert_der())
    }

    /// A client certificate for `cn` (a service account's).
    pub fn issue_client(&self, cn: &str) -> Result<Issued, PkiError> {
        let mut req = IssueRequest::server(cn);
        req.server = false;
        req.client = true;
        req.days = self.certificate_days;
        self.ca.issue(&req)
    }

    /// Revokes a serial and publishes the new CRL.
    pub fn revoke(&self, serial: &str) -> Result<(), PkiError> {
        self.ca.revoke_serial(serial)?;
        self.write_crl()
    }

    /// A certificate kept in the CA directory under `name`, issued again when missing or
    /// within the rotation window. Returns the paths of its chain and key.
    fn kept(
        &self,
        name: &str,
        make: impl FnOnce() -> IssueRequest,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let prefix = self.dir.join(name);
        // Controllers sharing the directory (on PostgreSQL) start at the same time: one
        // checks and issues while the others wait, or one could load another's
        // certificate with its own key.
        let lock = self.dir.join(".kept.lock");
        let _held = crate::fsutil::lock_exclusive(&lock).map_err(|e| PkiError::Io(lock, e))?;
        let crt = prefix.with_extension("crt");
        let key = prefix.with_extension("key");
        let req_wanted = make();
        // The names it must carry (a listener's, which change with the configuration).
        let wanted: std::collections::BTreeSet<String> = req_wanted.sans.iter().cloned().collect();
        let fresh = certs::load_certs(&crt)
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|c| certs::CertInfo::parse(&c).ok())
            .is_some_and(|info| {
                let has: std::collections::BTreeSet<String> = info
                    .dns_names
                    .iter()
                    .cloned()
                    .chain(info.ip_addresses.iter().map(|ip| ip.to_string()))
                    .collect();
                info.not_after - certs::now_unix() > i64::from(self.rotate_before_days) * 86_400
                    && (wanted.is_empty() || has == wanted)
            });
        if fresh && key.exists() {
            return Ok((crt, key));
        }
        let mut req = req_wanted;
        req.days = self.certificate_days;
        self.ca.issue(&req)?.write(&prefix)
    }

    /// The TLS client configuration for calling agents: trusts this CA only and
    /// presents the controller's client certificate.
    pub fn agent_client(&self) -> Result<Arc<ClientConfig>, PkiError> {
        let (crt, key) = self.kept("controller-client", || {
            let mut r = IssueRequest::server(CONTROLLER_CN);
            r.server = false;
            r.client = true;
            r
        })?;
        let load = || -> Result<ClientConfig, String> {
            let roots = certs::load_certs(&self.ca_cert_path())?;
            let identity = (certs::load_certs(&crt)?, certs::load_key(&key)?);
            client_config(&roots, Some(identity))
        };
        Ok(Arc::new(load().map_err(PkiError::Invalid)?))
    }

    /// A server certificate for a listener the configuration gives none, for `sans`.
    pub fn listener_cert(
        &self,
        name: &str,
        sans: Vec<String>,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        crate::fsutil::ensure_dir(&self.dir.join("listeners"), 0o700)
            .map_err(|e| PkiError::Invalid(e.to_string()))?;
        self.kept(&format!("listeners/{name}"), || {
            let mut r = IssueRequest::server("applianced-controller-listener");
            r.sans = sans;
            r
        })
    }
}

/// Issued material as the agent's `PUT /certificate` takes it: key, leaf, CA.
pub fn bundle(issued: &Issued) -> String {
    format!("{}{}{}", issued.key_pem, issued.cert_pem, issued.ca_pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Controllers sharing a CA directory that start together each end up with a
    /// matching certificate and key (one issues, the others wait and load it).
    #[test]
    fn concurrent_starts_agree_on_the_kept_certificate() {
        let dir = tempfile::tempdir().unwrap();
        ControllerCa::open(dir.path(), 30, 14).unwrap();
        for _ in 0..5 {
            for ext in ["crt", "key"] {
                let _ = std::fs::remove_file(dir.path().join(format!("controller-client.{ext}")));
            }
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let path = dir.path().to_path_buf();
                    std::thread::spawn(move || {
                        ControllerCa::open(&path, 30, 14).unwrap().agent_client()
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().expect("certificate and key match");
            }
        }
    }

    /// A listener's kept certificate is issued again when the names it must carry
    /// change (a netns bridge added to a wildcard listener), and kept otherwise.
    #[test]
    fn a_kept_listener_certificate_follows_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ControllerCa::open(dir.path(), 30, 14).unwrap();
        let serial = |sans: &[&str]| {
            let (crt, _) = ca
                .listener_cert(
                    "appliance-8444",
                    sans.iter().map(|s| s.to_string()).collect(),
                )
                .unwrap();
            let certs = certs::load_certs(&crt).unwrap();
            certs::CertInfo::parse(&certs[0]).unwrap()
        };
        let first = serial(&["localhost", "127.0.0.1"]);
        assert_eq!(serial(&["localhost", "127.0.0.1"]).serial, first.serial);
        let widened = serial(&["localhost", "127.0.0.1", "10.213.0.1"]);
        assert_ne!(widened.serial, first.serial);
        assert!(
            widened
                .ip_addresses
                .contains(&"10.213.0.1".parse().unwrap())
        );
    }
}
