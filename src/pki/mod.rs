//! The certificate authority behind `applianced pki` (and, later, the controller).
//!
//! A CA directory holds `ca.crt`, `ca.key` (0600), and `index.json`, the record of every
//! certificate it issued and revoked, from which CRLs are made. Changes to the index are
//! serialised across processes with an exclusive lock on `DIR/.lock` and written
//! atomically.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::certs::{self, CertInfo};
use crate::fsutil::{ensure_dir, write_atomic};

pub mod cli;
pub mod csr;

/// Default lifetime of a CA made by `pki init`.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default lifetime of a leaf certificate.
pub const DEFAULT_LEAF_DAYS: u32 = 365;
/// Default interval until a CRL's `nextUpdate`.
pub const DEFAULT_CRL_DAYS: u32 = 30;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0} already exists; refusing to overwrite a CA")]
    Exists(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |e| PkiError::Io(path.to_path_buf(), e)
}

/// Key algorithms the CA can issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum KeyType {
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    #[value(name = "ecdsa-p384")]
    EcdsaP384,
    #[value(name = "rsa2048")]
    Rsa2048,
    #[value(name = "rsa3072")]
    Rsa3072,
    #[value(name = "rsa4096")]
    Rsa4096,
}

impl KeyType {
    pub fn generate(self) -> Result<KeyPair, rcgen::Error> {
        use rcgen::RsaKeySize;
        match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
            KeyType::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
            }
            KeyType::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
            }
        }
    }

    fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }
}

/// One line of the CA's index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexEntry {
    pub serial: String,
    pub cn: String,
    pub server: bool,
    pub client: bool,
    pub not_before: String,
    pub not_after: String,
    pub issued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    crl_number: u64,
    certificates: Vec<IndexEntry>,
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub cn: String,
    pub server: bool,
    pub client: bool,
    /// DNS names or IP addresses. For a server certificate without any, the CN is used.
    pub sans: Vec<String>,
    pub days: u32,
    /// Explicit validity window (staging, tests); defaults to now .. now + days.
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    pub key_type: KeyType,
}

impl IssueRequest {
    /// A server certificate for `cn` with the defaults: ECDSA P-256, the CN as SAN,
    /// valid from now for [`DEFAULT_LEAF_DAYS`].
    pub fn server(cn: &str) -> IssueRequest {
        IssueRequest {
            cn: cn.to_string(),
            server: true,
            client: false,
            sans: Vec::new(),
            days: DEFAULT_LEAF_DAYS,
            not_before: None,
            not_after: None,
            key_type: KeyType::EcdsaP256,
        }
    }
}

/// A freshly issued certificate and its key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub ca_pem: String,
    pub key_pem: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

impl Issued {
    /// The leaf followed by the CA, the form servers and clients load.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.ca_pem)
    }

    /// Writes `PREFIX.crt` (leaf then CA) and `PREFIX.key` (0600).
    pub fn write(&self, prefix: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
        let crt = with_suffix(prefix, "crt");
        let key = with_suffix(prefix, "key");
        write_atomic(&key, self.key_pem.as_bytes(), 0o600).map_err(io_err(&key))?;
        write_atomic(&crt, self.chain_pem().as_bytes(), 0o644).map_err(io_err(&crt))?;
        Ok((crt, key))
    }
}

fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// A CA loaded from its directory.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    info: CertInfo,
}

impl Ca {
    /// Creates a new CA in `dir`. Refuses to overwrite an existing one.
    pub fn init(dir: &Path, cn: &str, days: u32, key_type: KeyType) -> Result<Ca, PkiError> {
        ensure_dir(dir, 0o700).map_err(io_err(dir))?;
        let (crt, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        for p in [&crt, &key_path] {
            if p.exists() {
                return Err(PkiError::Exists(p.clone()));
            }
        }
        let key = key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(i64::from(days.max(1)));
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(io_err(&key_path))?;
        write_atomic(&crt, cert.pem().as_bytes(), 0o644).map_err(io_err(&crt))?;
        let index = dir.join("index.json");
        if !index.exists() {
            save_index(dir, &Index::default())?;
        }
        Ca::load(dir)
    }

    /// Loads the CA of `dir` and checks that its key matches its certificate.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let crt = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let cert_pem = fs::read_to_string(&crt).map_err(io_err(&crt))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let certs_in = certs::parse_pem(cert_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", crt.display())))?;
        let cert_der = certs_in
            .certs
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Invalid(format!("{}: no certificate", crt.display())))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", key_path.display())))?;
        let info = CertInfo::parse(&cert_der).map_err(|e| PkiError::Invalid(e.to_string()))?;
        if !info.is_ca {
            return Err(PkiError::Invalid(format!(
                "{}: not a CA certificate",
                crt.display()
            )));
        }
        if rcgen::PublicKeyData::subject_public_key_info(&key) != spki_of(&cert_der)? {
            return Err(PkiError::Invalid(format!(
                "{} does not belong to {}",
                key_path.display(),
                crt.display()
            )));
        }
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_pem,
            cert_der,
            key,
            info,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a certificate and records it in the index.
    pub fn issue(&self, req: &IssueRequest) -> Result<Issued, PkiError> {
        let key = req.key_type.generate()?;
        let mut issued = self.sign(req, &key)?;
        issued.key_pem = key.serialize_pem();
        Ok(issued)
    }

    /// Issues a certificate for a public key whose private half stays with its owner
    /// (a certificate signing request's): `spki` is its SubjectPublicKeyInfo (DER). The
    /// result has no key.
    pub fn issue_for_key(&self, req: &IssueRequest, spki: &[u8]) -> Result<Issued, PkiError> {
        let key = rcgen::SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| PkiError::Invalid(format!("unusable public key: {e}")))?;
        self.sign(req, &key)
    }

    /// Signs `req` for `key` and records it in the index; the result's key is empty.
    fn sign(
        &self,
        req: &IssueRequest,
        key: &impl rcgen::PublicKeyData,
    ) -> Result<Issued, PkiError> {
        if req.cn.trim().is_empty() {
            return Err(PkiError::Invalid(
                "the common name must not be empty".into(),
            ));
        }
        if !req.server && !req.client {
            return Err(PkiError::Invalid(
                "choose --server, --client or both".into(),
            ));
        }
        let now = OffsetDateTime::now_utc();
        let not_before = req.not_before.unwrap_or(now - Duration::minutes(5));
        let not_after = req
            .not_after
            .unwrap_or(now + Duration::days(i64::from(req.days.max(1))));
        if not_after <= not_before {
            return Err(PkiError::Invalid(
                "not-after must be later than not-before".into(),
            ));
        }
        let mut sans = req.sans.clone();
        if sans.is_empty() && req.server {
            sans.push(req.cn.clone());
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| parse_san(s))
            .collect::<Result<Vec<_>, _>>()?;
        params.distinguished_name = dn(&req.cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if req.key_type.is_rsa() {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        if req.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if req.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let serial = random_serial();
        let serial_hex = certs::hex(serial.as_ref());
        params.serial_number = Some(serial);
        let cert = params.signed_by(key, &self.issuer()?)?;

        let _lock = self.lock()?;
        let mut index = load_index(&self.dir)?;
        index.certificates.push(IndexEntry {
            serial: serial_hex.clone(),
            cn: req.cn.clone(),
            server: req.server,
            client: req.client,
            not_before: certs::format_unix(not_before.unix_timestamp()),
            not_after: certs::format_unix(not_after.unix_timestamp()),
            issued_at: certs::format_unix(now.unix_timestamp()),
            revoked_at: None,
        });
        save_index(&self.dir, &index)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            ca_pem: self.cert_pem.clone(),
            key_pem: String::new(),
            serial: serial_hex,
            not_after,
        })
    }

    /// Marks a certificate this CA issued as revoked. Revoking twice is not an error.
    pub fn revoke(&self, cert: &CertificateDer<'_>) -> Result<IndexEntry, PkiError> {
        if !certs::is_signed_by(cert, &self.cert_der) {
            return Err(PkiError::Invalid(
                "the certificate was not issued by this CA".into(),
            ));
        }
        let info = CertInfo::parse(cert).map_err(|e| PkiError::Invalid(e.to_string()))?;
        self.revoke_serial(&info.serial)
    }

    /// Marks the certificate with this serial (lower-case hex) as revoked.
    pub fn revoke_serial(&self, serial: &str) -> Result<IndexEntry, PkiError> {
        let _lock = self.lock()?;
        let mut index = load_index(&self.dir)?;
        let entry = index
            .certificates
            .iter_mut()
            .find(|e| e.serial == serial)
            .ok_or_else(|| {
                PkiError::Invalid(format!("serial {serial} is not in this CA's index"))
            })?;
        if entry.revoked_at.is_none() {
            entry.revoked_at = Some(certs::format_unix(certs::now_unix()));
        }
        let entry = entry.clone();
        save_index(&self.dir, &index)?;
        Ok(entry)
    }

    /// Signs a CRL listing every revoked certificate, valid for `days`.
    pub fn crl_pem(&self, days: u32) -> Result<String, PkiError> {
        let _lock = self.lock()?;
        let mut index = load_index(&self.dir)?;
        index.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let revoked_certs = index
            .certificates
            .iter()
            .filter_map(|e| {
                let at = e.revoked_at.as_deref()?;
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&certs::unhex(&e.serial)?),
                    revocation_time: OffsetDateTime::parse(
                        at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .ok()?,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(i64::from(days.max(1))),
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        save_index(&self.dir, &index)?;
        Ok(crl.pem()?)
    }

    /// Every certificate this CA issued.
    pub fn index(&self) -> Result<Vec<IndexEntry>, PkiError> {
        Ok(load_index(&self.dir)?.certificates)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, PkiError> {
        let path = self.dir.join(".lock");
        crate::fsutil::lock_exclusive(&path).map_err(io_err(&path))
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn parse_san(s: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = s
        .to_string()
        .try_into()
        .map_err(|_| PkiError::Invalid(format!("{s:?} is neither a DNS name nor an IP address")))?;
    Ok(SanType::DnsName(name))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    certs::provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    // Positive and without a leading zero byte, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn spki_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
    Ok(c.public_key().raw.to_vec())
}

fn load_index(dir: &Path) -> Result<Index, PkiError> {
    let path = dir.join("index.json");
    match fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
        Err(e) => Err(PkiError::Io(path, e)),
    }
}

fn save_index(dir: &Path, index: &Index) -> Result<(), PkiError> {
    let path = dir.join("index.json");
    let data = serde_json::to_vec_pretty(index).expect("index serialises");
    // The CA's own record: no one else's business, even where others may pass through
    // the CA directory to read its certificate and CRL.
    write_atomic(&path, &data, 0o600).map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str) -> IssueRequest {
        IssueRequest {
            days: 30,
            ..IssueRequest::server(cn)
        }
    }

    #[test]
    fn issues_chains_and_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "Test CA", 10, KeyType::EcdsaP256).unwrap();
        assert!(Ca::init(dir.path(), "again", 10, KeyType::EcdsaP256).is_err());
        let mut req = request("agent-1");
        req.sans = vec!["127.0.0.1".into(), "agent.example".into()];
        let issued = ca.issue(&req).unwrap();
        let bundle = certs::parse_pem(issued.chain_pem().as_bytes()).unwrap();
        assert_eq!(bundle.certs.len(), 2);
        let info = CertInfo::parse(&bundle.certs[0]).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("agent-1"));
        assert_eq!(info.server_auth, Some(true));
        assert_eq!(info.client_auth, Some(false));
        assert!(!info.is_ca);
        assert_eq!(info.serial, issued.serial);
        assert!(info.not_after - info.not_before <= 31 * 86400);
        assert!(certs::check_chains_to(&bundle.certs[..1], &bundle.certs[1..]).is_ok());
        let key = certs::parse_pem(issued.key_pem.as_bytes())
            .unwrap()
            .keys
            .remove(0);
        certs::certified_key(bundle.certs.clone(), key).unwrap();

        let entry = ca.revoke(&bundle.certs[0]).unwrap();
        assert!(entry.revoked_at.is_some());
        let crl = ca.crl_pem(7).unwrap();
        assert!(crl.contains("BEGIN X509 CRL"));
        assert_eq!(ca.index().unwrap().len(), 1);
    }

    #[test]
    fn rsa_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "RSA CA", 10, KeyType::Rsa2048).unwrap();
        let mut req = request("rsa-leaf");
        req.key_type = KeyType::Rsa2048;
        let issued = ca.issue(&req).unwrap();
        assert!(issued.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn refuses_foreign_certificate() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ca_a = Ca::init(a.path(), "A", 10, KeyType::EcdsaP256).unwrap();
        let ca_b = Ca::init(b.path(), "B", 10, KeyType::EcdsaP256).unwrap();
        let issued = ca_b.issue(&request("x")).unwrap();
        let der = certs::parse_pem(issued.cert_pem.as_bytes())
            .unwrap()
            .certs
            .remove(0);
        assert!(ca_a.revoke(&der).is_err());
    }
}
