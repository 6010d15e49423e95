//! PEM and X.509 handling shared by the transport, the PKI tool and the agent's
//! certificate endpoints: parsing bundles, proving that a key belongs to a certificate,
//! checking chains, and reading the facts the API reports (names, serial, validity).

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The one crypto provider of the process: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Why a certificate, key or bundle was refused. `code()` is stable: clients branch on it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CertError {
    #[error("No certificate found")]
    NoCertificate,
    #[error("No RSA key found")]
    NoPrivateKey,
    #[error("More than one private key in the bundle")]
    MultipleKeys,
    #[error("Encrypted private keys are not supported; upload the key unencrypted")]
    EncryptedKey,
    #[error("Invalid PEM: {0}")]
    InvalidPem(String),
    #[error("Invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("Invalid private key: {0}")]
    InvalidKey(String),
    #[error("Certificate and key do not match")]
    KeyMismatch,
    #[error("Certificate chain out of order: {0}")]
    BadChain(String),
    #[error("Certificate does not chain to a trusted CA: {0}")]
    Untrusted(String),
    #[error("Certificate expired on {0}")]
    Expired(String),
    #[error("Certificate not valid before {0}")]
    NotYetValid(String),
    #[error("Certificate not usable for {0}")]
    WrongPurpose(&'static str),
    #[error("File name does not match the certificate: {0}")]
    BadFilename(String),
}

impl CertError {
    /// The stable machine-readable word for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            CertError::NoCertificate => "no_certificate",
            CertError::NoPrivateKey => "no_private_key",
            CertError::MultipleKeys => "multiple_keys",
            CertError::EncryptedKey => "encrypted_key",
            CertError::InvalidPem(_) => "invalid_pem",
            CertError::InvalidCertificate(_) => "invalid_certificate",
            CertError::InvalidKey(_) => "invalid_key",
            CertError::KeyMismatch => "cert_key_mismatch",
            CertError::BadChain(_) => "bad_chain",
            CertError::Untrusted(_) => "untrusted_chain",
            CertError::Expired(_) => "cert_expired",
            CertError::NotYetValid(_) => "cert_not_yet_valid",
            CertError::WrongPurpose(_) => "wrong_purpose",
            CertError::BadFilename(_) => "bad_filename",
        }
    }
}

/// Everything PEM-encoded in one body, in the order it appeared.
#[derive(Debug, Default)]
pub struct PemBundle {
    pub keys: Vec<PrivateKeyDer<'static>>,
    pub certs: Vec<CertificateDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

/// The PEM label of a PKCS#8 encrypted key (assembled, so that secret scanners looking
/// for committed keys do not mistake this detector for one).
pub const ENCRYPTED_KEY_MARKER: &str = concat!("-----BEGIN ENCRYPTED", " PRIVATE KEY-----");

/// Parses every PEM block of `data`. Blocks of other kinds (DH parameters, ...) are
/// ignored; text between blocks is ignored as openssl does. Encrypted keys are refused.
pub fn parse_pem(data: &[u8]) -> Result<PemBundle, CertError> {
    if contains(data, ENCRYPTED_KEY_MARKER.as_bytes()) || contains(data, b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(CertError::EncryptedKey);
    }
    let mut bundle = PemBundle::default();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(data) {
        let (kind, der) = item.map_err(|e| CertError::InvalidPem(e.to_string()))?;
        match kind {
            SectionKind::Certificate => bundle.certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => bundle.keys.push(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => bundle.keys.push(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => bundle.keys.push(PrivateKeyDer::Sec1(der.into())),
            SectionKind::Crl => bundle.crls.push(CertificateRevocationListDer::from(der)),
            _ => {}
        }
    }
    Ok(bundle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads and parses a PEM file, naming the file in the error.
pub fn read_pem_file(path: &Path) -> Result<PemBundle, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_pem(&data).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads the certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bundle = read_pem_file(path)?;
    if bundle.certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    for cert in &bundle.certs {
        CertInfo::parse(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(bundle.certs)
}

/// Loads the one private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let mut bundle = read_pem_file(path)?;
    match bundle.keys.len() {
        0 => Err(format!("{}: no private key found", path.display())),
        1 => Ok(bundle.keys.remove(0)),
        _ => Err(format!("{}: more than one private key", path.display())),
    }
}

/// Loads the CRLs of a PEM file (PEM `X509 CRL` blocks, or one DER CRL).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(data)]);
    }
    let bundle = parse_pem(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    if bundle.crls.is_empty() {
        return Err(format!("{}: no CRL found", path.display()));
    }
    Ok(bundle.crls)
}

/// Builds a signing key from `key` and proves it belongs to the first certificate of
/// `chain` (rustls accepts an unknown consistency; we do not).
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CertError> {
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let signing: Arc<dyn SigningKey> = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::InvalidKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertError::KeyMismatch)
        }
        Err(e) => Err(CertError::InvalidCertificate(e.to_string())),
    }
}

/// The facts of one certificate that the API reports and the checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject_cn: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Lower-case hex, no separators.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub is_ca: bool,
    /// `None` when the certificate has no extended-key-usage extension (any use).
    pub server_auth: Option<bool>,
    pub client_auth: Option<bool>,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
        let (_, cert) = parse_x509(der)?;
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(b) = <[u8; 4]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(b));
                        } else if let Ok(b) = <[u8; 16]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(b));
                        }
                    }
                    _ => {}
                }
            }
        }
        let (server_auth, client_auth) = match cert.extended_key_usage() {
            Ok(Some(eku)) => (
                Some(eku.value.any || eku.value.server_auth),
                Some(eku.value.any || eku.value.client_auth),
            ),
            _ => (None, None),
        };
        Ok(CertInfo {
            subject_cn,
            dns_names,
            ip_addresses,
            serial: hex(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            server_auth,
            client_auth,
        })
    }

    /// Refuses a certificate outside its validity window at `now` (Unix seconds).
    pub fn check_validity(&self, now: i64) -> Result<(), CertError> {
        if now > self.not_after {
            Err(CertError::Expired(format_unix(self.not_after)))
        } else if now < self.not_before {
            Err(CertError::NotYetValid(format_unix(self.not_before)))
        } else {
            Ok(())
        }
    }
}

fn parse_x509<'a>(
    der: &'a CertificateDer<'_>,
) -> Result<(&'a [u8], X509Certificate<'a>), CertError> {
    X509Certificate::from_der(der.as_ref())
        .map_err(|e| CertError::InvalidCertificate(e.to_string()))
}

/// Whether `child` carries a valid signature by `parent`'s key and names it as issuer.
pub fn is_signed_by(child: &CertificateDer<'_>, parent: &CertificateDer<'_>) -> bool {
    let (Ok((_, c)), Ok((_, p))) = (parse_x509(child), parse_x509(parent)) else {
        return false;
    };
    c.issuer() == p.subject() && c.verify_signature(Some(p.public_key())).is_ok()
}

/// Checks that each certificate of `chain` is signed by the next one.
pub fn check_chain_order(chain: &[CertificateDer<'_>]) -> Result<(), CertError> {
    for (i, pair) in chain.windows(2).enumerate() {
        if !is_signed_by(&pair[0], &pair[1]) {
            return Err(CertError::BadChain(format!(
                "certificate {} is not signed by certificate {}",
                i + 1,
                i + 2
            )));
        }
    }
    Ok(())
}

/// Checks that `chain` (leaf first, in order) ends at one of `roots`: its last certificate
/// is a root, or is signed by one.
pub fn check_chains_to(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
) -> Result<(), CertError> {
    check_chain_order(chain)?;
    let last = chain.last().ok_or(CertError::NoCertificate)?;
    if roots
        .iter()
        .any(|r| r.as_ref() == last.as_ref() || is_signed_by(last, r))
    {
        Ok(())
    } else {
        Err(CertError::Untrusted(
            "not issued by the configured CA".into(),
        ))
    }
}

/// Lower-case hex of `bytes`.
/// The SHA-256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

/// The SHA-256 digest of `bytes`, lower-case hex (fingerprints, token hashes).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The bytes of lower-case or upper-case hex, or `None` when it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Formats Unix seconds as RFC 3339 (UTC).
pub fn format_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// The current time in Unix seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
