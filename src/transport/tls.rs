//! Server-side TLS: building a rustls configuration from files or uploaded PEM, the
//! client-certificate verifier (CA bundle, CRLs, optional allow-list), and the client
//! identity handed to the application.
//!
//! The live configuration sits in an `ArcSwap`; each accepted connection loads the
//! current one, so a swap (SIGHUP, `PUT /certificate`) reaches new connections at once
//! while open ones keep the configuration they were accepted with.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::certs::{self, CertError, CertInfo};

/// Where a server's TLS material is: its certificate chain and key, the CA bundles that
/// verify clients and the servers it calls, and the revocation lists.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub server_ca: PathBuf,
    pub crls: Vec<PathBuf>,
}

/// Who is calling: read from the verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cn: Option<String>,
    pub dns_names: Vec<String>,
    pub serial: String,
}

impl ClientIdentity {
    pub fn from_cert(der: &CertificateDer<'_>) -> Option<ClientIdentity> {
        let info = CertInfo::parse(der).ok()?;
        Some(ClientIdentity {
            cn: info.subject_cn,
            dns_names: info.dns_names,
            serial: info.serial,
        })
    }

    /// The name used in logs and metrics: the CN, else the first DNS SAN.
    pub fn name(&self) -> &str {
        self.cn
            .as_deref()
            .or(self.dns_names.first().map(String::as_str))
            .unwrap_or("-")
    }
}

/// The DNS names of a client certificate for a log line: comma-separated, `-` if none.
pub struct Sans<'a>(pub &'a [String]);

impl fmt::Display for Sans<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = self.0.iter();
        match names.next() {
            None => f.write_str("-"),
            Some(first) => {
                f.write_str(first)?;
                names.try_for_each(|n| write!(f, ",{n}"))
            }
        }
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cn={} serial={}", self.name(), self.serial)
    }
}

/// Client-identity patterns: `*` matches any run of characters, case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<String>);

impl AllowList {
    pub fn new(patterns: &[String]) -> Self {
        AllowList(
            patterns
                .iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, id: &ClientIdentity) -> bool {
        self.0.is_empty()
            || id.cn.iter().chain(id.dns_names.iter()).any(|name| {
                self.0
                    .iter()
                    .any(|p| glob_match(p, &name.to_ascii_lowercase()))
            })
    }
}

fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(after) = text.strip_prefix(head) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=after.len())
                .filter(|&i| after.is_char_boundary(i))
                .any(|i| glob_match(rest, &after[i..]))
        }
    }
}

/// Everything TLS needs besides the server's own certificate.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub tls13_only: bool,
    pub allowed_clients: AllowList,
}

/// The loaded TLS material and the rustls configuration built from it.
pub struct TlsMaterial {
    pub config: Arc<ServerConfig>,
    /// The server certificate in use.
    pub server_cert: CertInfo,
    /// Roots a replacement server certificate must chain to.
    pub server_roots: Vec<CertificateDer<'static>>,
    /// `None`: clients are not asked for a certificate (an operator zone with tokens).
    client_roots: Option<Arc<RootCertStore>>,
    /// Clients are asked for a certificate but may go without (one presented is verified).
    client_optional: bool,
    crls: Vec<CertificateRevocationListDer<'static>>,
    settings: TlsSettings,
}

impl TlsMaterial {
    /// Loads every file named by `paths` and builds the configuration.
    pub fn load(paths: &TlsPaths, settings: TlsSettings) -> Result<TlsMaterial, String> {
        let chain = certs::load_certs(&paths.cert)?;
        let key = certs::load_key(&paths.key)?;
        let client_roots = root_store(&certs::load_certs(&paths.client_ca)?)
            .map_err(|e| format!("{}: {e}", paths.client_ca.display()))?;
        let server_roots = certs::load_certs(&paths.server_ca)?;
        let mut crls = Vec::new();
        for p in &paths.crls {
            crls.extend(certs::load_crls(p)?);
        }
        let certified = certs::certified_key(chain, key)
            .map_err(|e| format!("{} / {}: {e}", paths.cert.display(), paths.key.display()))?;
        TlsMaterial::build(
            certified,
            Some(Arc::new(client_roots)),
            false,
            server_roots,
            crls,
            settings,
        )
    }

    /// TLS for one listener: its certificate chain and key, and the CA bundle client
    /// certificates must chain to (`None`: no client certificate is asked for);
    /// `client_optional`: clients may also come without one.
    pub fn for_listener(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        client_optional: bool,
        crl_files: &[&Path],
    ) -> Result<TlsMaterial, String> {
        let chain = certs::load_certs(cert)?;
        let key_der = certs::load_key(key)?;
        let client_roots = match client_ca {
            Some(ca) => Some(Arc::new(
                root_store(&certs::load_certs(ca)?)
                    .map_err(|e| format!("{}: {e}", ca.display()))?,
            )),
            None => None,
        };
        let mut crls = Vec::new();
        for p in crl_files {
            crls.extend(certs::load_crls(p)?);
        }
        let certified = certs::certified_key(chain.clone(), key_der)
            .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))?;
        let settings = TlsSettings {
            tls13_only: false,
            allowed_clients: AllowList::default(),
        };
        TlsMaterial::build(
            certified,
            client_roots,
            client_optional,
            chain,
            crls,
            settings,
        )
    }

    /// Whether every connection presents a verified client certificate.
    pub fn requires_client_certificate(&self) -> bool {
        self.client_roots.is_some() && !self.client_optional
    }

    /// The same material with a new server certificate and key.
    pub fn with_server_key(&self, certified: CertifiedKey) -> Result<TlsMaterial, String> {
        TlsMaterial::build(
            certified,
            self.client_roots.clone(),
            self.client_optional,
            self.server_roots.clone(),
            self.crls.clone(),
            self.settings.clone(),
        )
    }

    fn build(
        certified: CertifiedKey,
        client_roots: Option<Arc<RootCertStore>>,
        client_optional: bool,
        server_roots: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        settings: TlsSettings,
    ) -> Result<TlsMaterial, String> {
        let provider = certs::provider();
        let verifier: Arc<dyn ClientCertVerifier> = match &client_roots {
            Some(roots) => {
                let mut builder =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                        .with_crls(crls.clone());
                if client_optional {
                    builder = builder.allow_unauthenticated();
                }
                let inner = builder
                    .build()
                    .map_err(|e| format!("client certificate verifier: {e}"))?;
                Arc::new(AllowListVerifier {
                    inner,
                    allow: settings.allowed_clients.clone(),
                })
            }
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let server_cert = CertInfo::parse(&certified.cert[0]).map_err(|e| e.to_string())?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCert(Arc::new(certified))));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Resumption keeps reconnecting controllers cheap; tickets rotate automatically.
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
        Ok(TlsMaterial {
            config: Arc::new(config),
            server_cert,
            server_roots,
            client_roots,
            client_optional,
            crls,
            settings,
        })
    }

    /// Validates an uploaded server certificate bundle (key, leaf, chain in PEM): it
    /// parses, the key matches, it chains to the server CA, it is valid now and usable
    /// by a server. Returns the new material and the PEM split for writing to disk.
    pub fn validate_server_bundle(&self, pem: &[u8]) -> Result<ServerBundle, CertError> {
        let mut bundle = certs::parse_pem(pem)?;
        if bundle.certs.is_empty() {
            return Err(CertError::NoCertificate);
        }
        let key = match bundle.keys.len() {
            0 => return Err(CertError::NoPrivateKey),
            1 => bundle.keys.remove(0),
            _ => return Err(CertError::MultipleKeys),
        };
        let leaf = CertInfo::parse(&bundle.certs[0])?;
        for c in &bundle.certs[1..] {
            CertInfo::parse(c)?;
        }
        leaf.check_validity(certs::now_unix())?;
        if leaf.server_auth == Some(false) {
            return Err(CertError::WrongPurpose("TLS server authentication"));
        }
        certs::check_chains_to(&bundle.certs, &self.server_roots)?;
        check_deliverable_chain(&bundle.certs, &self.server_roots)?;
        let key_pem = pem_encode_key(&key);
        let cert_pem = pem_encode_certs(&bundle.certs);
        let certified = certs::certified_key(bundle.certs, key)?;
        let material = self
            .with_server_key(certified)
            .map_err(CertError::InvalidCertificate)?;
        Ok(ServerBundle {
            material,
            cert_pem,
            key_pem,
        })
    }
}

/// A validated replacement for the server certificate.
pub struct ServerBundle {
    pub material: TlsMaterial,
    pub cert_pem: String,
    pub key_pem: String,
}

fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs {
        store
            .add(c.clone())
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    Ok(store)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Most certificates a server chain may hold (leaf, intermediates, root).
pub const MAX_CHAIN_CERTIFICATES: usize = 8;
/// Most bytes (DER) a server chain may hold: a TLS handshake message carries at most
/// 64 KiB, and rustls clients refuse larger ones (`EXCESSIVE_MESSAGE_SIZE`).
pub const MAX_CHAIN_BYTES: usize = 32 * 1024;

/// A chain every TLS client can receive and follow: a path without repetition from the
/// leaf towards the configured CA, nothing after the CA itself, within
/// [`MAX_CHAIN_CERTIFICATES`] and [`MAX_CHAIN_BYTES`]. (Order and trust are checked by
/// [`certs::check_chains_to`].)
pub fn check_deliverable_chain(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
) -> Result<(), CertError> {
    if chain.len() > MAX_CHAIN_CERTIFICATES {
        return Err(CertError::BadChain(format!(
            "{} certificates; at most {MAX_CHAIN_CERTIFICATES} are accepted",
            chain.len()
        )));
    }
    let bytes: usize = chain.iter().map(|c| c.as_ref().len()).sum();
    if bytes > MAX_CHAIN_BYTES {
        return Err(CertError::BadChain(format!(
            "{bytes} bytes of certificates; TLS clients accept at most {MAX_CHAIN_BYTES}"
        )));
    }
    for (i, c) in chain.iter().enumerate() {
        if chain[..i]
            .iter()
            .any(|earlier| earlier.as_ref() == c.as_ref())
        {
            return Err(CertError::BadChain(format!(
                "certificate {} repeats an earlier one",
                i + 1
            )));
        }
        if i + 1 < chain.len() && roots.iter().any(|r| r.as_ref() == c.as_ref()) {
            return Err(CertError::BadChain(format!(
                "certificate {} is the CA itself; nothing may follow it",
                i + 1
            )));
        }
    }
    Ok(())
}

/// PEM-encodes certificates, in order.
pub fn pem_encode_certs(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c.as_ref()))
        .collect()
}

/// PEM-encodes a private key with the label of its format.
pub fn pem_encode_key(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    pem_encode(label, key.secret_der())
}

#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The webpki verifier (chain to the CA bundle, validity, CRLs, clientAuth usage), then
/// the allow-list: a client outside it is refused in the handshake (`access_denied`).
#[derive(Debug)]
struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allow.is_empty() {
            return Ok(verified);
        }
        match ClientIdentity::from_cert(end_entity) {
            Some(id) if self.allow.allows(&id) => Ok(verified),
            other => {
                let who = other
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "unparsable".into());
                tracing::warn!(client = %who, "client refused: not in server.allowed_clients");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A short label for a failed handshake, for logs and metrics.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
    };
    match tls {
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown_ca",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::Revoked => "revoked",
            // CRLs are configured but none comes from this certificate's issuer.
            C::UnknownRevocationStatus => "unknown_revocation_status",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "wrong_purpose",
            C::ApplicationVerificationFailure => "not_allowed",
            _ => "bad_certificate",
        },
        E::InvalidMessage(_) => "invalid_message",
        E::PeerIncompatible(_) => "incompatible",
        E::AlertReceived(_) => "alert_received",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_globs() {
        let id = ClientIdentity {
            cn: Some("controller-7".into()),
            dns_names: vec!["ctl.example".into()],
            serial: "01".into(),
        };
        assert!(AllowList::new(&[]).allows(&id));
        assert!(AllowList::new(&["controller-*".into()]).allows(&id));
        assert!(AllowList::new(&["*.EXAMPLE".into()]).allows(&id));
        assert!(AllowList::new(&["c*-7".into()]).allows(&id));
        assert!(!AllowList::new(&["controller-8".into(), "x*".into()]).allows(&id));
        assert!(!AllowList::new(&["controller-".into()]).allows(&id));
    }

    #[test]
    fn pem_roundtrip() {
        for len in [0usize, 1, 2, 3, 4, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            let parsed = certs::parse_pem(pem.as_bytes()).unwrap();
            if len > 0 {
                assert_eq!(parsed.certs[0].as_ref(), der.as_slice());
            }
        }
    }
}
