//! A small HTTP/1.1 client for the calls the system makes itself: the controller to
//! agents (mutual TLS), agents to the controller (mutual TLS, their own certificate),
//! and the controller's webhooks (`http` or `https`). One connection per request, a
//! deadline over the whole exchange, a bounded response body. TLS session resumption
//! keeps repeated calls to the same peer cheap.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use crate::certs;

/// Largest response body read.
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("https is not configured for this client")]
    NoTls,
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP exchange with {0}: {1}")]
    Http(String, String),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// The server's certificate is valid but not the one expected there.
    #[error("{0} presented the certificate of {1:?}, not of {2:?}")]
    WrongPeer(String, String, String),
}

impl ClientError {
    /// Whether trying again may help (the peer was unreachable or slow, not wrong).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            ClientError::Url(_) | ClientError::NoTls | ClientError::WrongPeer(..)
        )
    }
}

/// A response, its body read whole (up to [`MAX_RESPONSE`]).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Client {
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl Client {
    pub fn new(tls: Option<Arc<ClientConfig>>, timeout: Duration) -> Client {
        Client { tls, timeout }
    }

    /// Sends one request; `body` is sent as is with `content_type` when given.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        self.send_to(method, url, headers, body, None).await
    }

    /// [`Client::send`], to a server whose certificate must name `peer` as its common
    /// name (before anything is sent).
    pub async fn send_to(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
        peer: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let peer_cn_owned = peer.map(str::to_string);
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.into()))?;
        let host = bare_host(uri.host().ok_or_else(|| ClientError::Url(url.into()))?).to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ClientError::Url(url.into())),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(body))
            .map_err(|e| ClientError::Url(format!("{url}: {e}")))?;
        *request.headers_mut() = headers;
        request.headers_mut().insert(
            header::HOST,
            HeaderValue::from_str(&authority).map_err(|_| ClientError::Url(url.into()))?,
        );
        let tls = if https {
            Some(self.tls.clone().ok_or(ClientError::NoTls)?)
        } else {
            None
        };
        let expected = peer_cn_owned;
        let peer = format!("{host}:{port}");
        let exchange = exchange(peer.clone(), host, port, tls, request, expected);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(peer, self.timeout)),
        }
    }
}

async fn exchange(
    peer: String,
    host: String,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    request: Request<Full<Bytes>>,
    expected: Option<String>,
) -> Result<Reply, ClientError> {
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| ClientError::Connect(peer.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(config) => {
            let name =
                ServerName::try_from(host.clone()).map_err(|_| ClientError::Url(host.clone()))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Tls(peer.clone(), e))?;
            if let Some(expected) = expected {
                let named = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| certs::CertInfo::parse(leaf).ok())
                    .and_then(|info| info.subject_cn)
                    .unwrap_or_default();
                if named != expected {
                    return Err(ClientError::WrongPeer(peer, named, expected));
                }
            }
            over(peer, TokioIo::new(stream), request).await
        }
        None => over(peer, TokioIo::new(tcp), request).await,
    }
}

async fn over<T>(peer: String, io: T, request: Request<Full<Bytes>>) -> Result<Reply, ClientError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| ClientError::Http(peer.clone(), e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    let driver = tokio::spawn(conn);
    let response = sender.send_request(request).await.map_err(http)?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| ClientError::Http(peer.clone(), e.to_string()))?
        .to_bytes();
    driver.abort();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A TLS client configuration trusting `roots`, presenting `identity` (chain and key)
/// when given. TLS 1.3 and 1.2, aws-lc-rs.
pub fn client_config(
    roots: &[rustls_pki_types::CertificateDer<'static>],
    identity: Option<(
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<ClientConfig, String> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| format!("trust anchor: {e}"))?;
    }
    let builder = ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store);
    let config = match identity {
        Some((chain, key)) => {
            // Proves the key belongs to the certificate before offering it.
            certs::certified_key(chain.clone(), key.clone_key()).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// [`client_config`] from files: a CA bundle and, optionally, a certificate and key.
pub fn client_config_from_files(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let roots = certs::load_certs(ca)?;
    let identity = match identity {
        Some((cert, key)) => Some((certs::load_certs(cert)?, certs::load_key(key)?)),
        None => None,
    };
    client_config(&roots, identity).map_err(|e| format!("{}: {e}", ca.display()))
}

/// A URL's host without the brackets around an IPv6 address.
pub fn bare_host(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// JSON request headers.
pub fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h
}

/// A TLS client configuration (no client certificate) that trusts a server whose chain
/// holds a CA certificate with this SHA-256 fingerprint (of its DER), and whose leaf that
/// CA issued for the name connected to: trust on first use made safe by a fingerprint
/// given out of band (an enrolment command).
pub fn client_config_pinned(fingerprint: [u8; 32]) -> Result<ClientConfig, String> {
    let verifier = Arc::new(PinnedCa {
        fingerprint,
        provider: certs::provider(),
    });
    Ok(ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| certs::sha256(c.as_ref()) == self.fingerprint);
        let Some(ca) = pinned else {
            return Err(rustls::Error::General(
                "the server's chain has no CA certificate with the pinned fingerprint".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        let others: Vec<_> = intermediates
            .iter()
            .filter(|c| c.as_ref() != ca.as_ref())
            .cloned()
            .collect();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?
        .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
