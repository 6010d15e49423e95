//! Certificate bundles uploaded to `/instances/:id/certificates/:file.pem`: one PEM body
//! with the unencrypted private key, the certificate, then its chain (the seed's order).
//! Validation follows the spec's table; nothing is written when a check fails.

use crate::certs::{self, CertError, CertInfo};

/// A bundle that passed every check.
#[derive(Debug)]
pub struct ValidBundle {
    pub leaf: CertInfo,
    /// Set when the certificate is outside its validity window but staging is allowed.
    pub warning: Option<String>,
}

/// Checks a certificate file name: `.pem`, and the primary CN or a SAN with `WILDCARD`
/// standing for `*` (case-insensitive, as DNS names are).
pub fn check_filename(name: &str, leaf: &CertInfo) -> Result<(), CertError> {
    let Some(stem) = name.strip_suffix(".pem") else {
        return Err(CertError::BadFilename(format!("{name:?} must end in .pem")));
    };
    let stem = stem.replace("WILDCARD", "*").to_ascii_lowercase();
    let candidates = leaf
        .subject_cn
        .iter()
        .cloned()
        .chain(leaf.dns_names.iter().cloned())
        .chain(leaf.ip_addresses.iter().map(|ip| ip.to_string()));
    let names: Vec<String> = candidates.map(|n| n.to_ascii_lowercase()).collect();
    if names.contains(&stem) {
        return Ok(());
    }
    let expected = leaf
        .subject_cn
        .as_deref()
        .map(|cn| format!("{}.pem", cn.replace('*', "WILDCARD")))
        .unwrap_or_else(|| "<CN>.pem".into());
    Err(CertError::BadFilename(format!(
        "{name:?} names none of the certificate's names ({}); expected {expected:?}",
        names.join(", ")
    )))
}

/// Validates a bundle body for the file `name`.
pub fn validate(
    name: &str,
    body: &[u8],
    allow_outside_validity: bool,
    now: i64,
) -> Result<ValidBundle, CertError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(CertError::NoCertificate);
    }
    let mut bundle = certs::parse_pem(body)?;
    if bundle.certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let infos = bundle
        .certs
        .iter()
        .map(CertInfo::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let key = match bundle.keys.len() {
        0 => return Err(CertError::NoPrivateKey),
        1 => bundle.keys.remove(0),
        _ => return Err(CertError::MultipleKeys),
    };
    certs::certified_key(bundle.certs.clone(), key)?;
    certs::check_chain_order(&bundle.certs)?;
    let leaf = infos.into_iter().next().ok_or(CertError::NoCertificate)?;
    check_filename(name, &leaf)?;
    let warning = match leaf.check_validity(now) {
        Ok(()) => None,
        Err(e) if allow_outside_validity => Some(e.to_string()),
        Err(e) => return Err(e),
    };
    Ok(ValidBundle { leaf, warning })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, IssueRequest, KeyType};

    fn issue(ca: &Ca, cn: &str, sans: &[&str], key_type: KeyType) -> crate::pki::Issued {
        ca.issue(&IssueRequest {
            sans: sans.iter().map(|s| s.to_string()).collect(),
            key_type,
            ..IssueRequest::server(cn)
        })
        .unwrap()
    }

    #[test]
    fn the_spec_table() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "CA", 10, KeyType::EcdsaP256).unwrap();
        let www = issue(
            &ca,
            "www.example.com",
            &["www.example.com", "example.com"],
            KeyType::EcdsaP256,
        );
        let other = issue(&ca, "other.example.com", &[], KeyType::EcdsaP256);
        let good = format!("{}{}", www.key_pem, www.chain_pem());
        let now = crate::certs::now_unix();
        let code = |name: &str, body: &str| {
            validate(name, body.as_bytes(), true, now)
                .map(|_| ())
                .unwrap_err()
                .code()
        };

        assert!(validate("www.example.com.pem", good.as_bytes(), true, now).is_ok());
        assert!(validate("example.com.pem", good.as_bytes(), true, now).is_ok());
        assert_eq!(code("www.example.com.pem", &www.key_pem), "no_certificate");
        assert_eq!(code("www.example.com.pem", ""), "no_certificate");
        assert_eq!(
            code("www.example.com.pem", &www.chain_pem()),
            "no_private_key"
        );
        assert_eq!(
            code(
                "www.example.com.pem",
                &format!("{}{}", other.key_pem, www.chain_pem())
            ),
            "cert_key_mismatch"
        );
        assert_eq!(code("wrong.example.com.pem", &good), "bad_filename");
        assert_eq!(code("www.example.com", &good), "bad_filename");
        assert_eq!(
            code(
                "www.example.com.pem",
                &format!("{}{}{}", www.key_pem, ca.cert_pem(), www.cert_pem)
            ),
            "cert_key_mismatch"
        );
        let out_of_order = format!(
            "{}{}{}{}",
            www.key_pem,
            www.cert_pem,
            other.cert_pem,
            ca.cert_pem()
        );
        assert_eq!(code("www.example.com.pem", &out_of_order), "bad_chain");
        let marker = crate::certs::ENCRYPTED_KEY_MARKER;
        let encrypted = format!(
            "{marker}\nMIIB\n{}\n{}",
            marker.replace("BEGIN", "END"),
            www.chain_pem()
        );
        assert_eq!(code("www.example.com.pem", &encrypted), "encrypted_key");
        assert_eq!(
            code(
                "www.example.com.pem",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
            ),
            "invalid_pem"
        );
        assert_eq!(
            code(
                "www.example.com.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ),
            "invalid_certificate"
        );
        assert_eq!(
            code("www.example.com.pem", "just some text"),
            "no_certificate"
        );
    }

    #[test]
    fn wildcard_rsa_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "CA", 10, KeyType::EcdsaP256).unwrap();
        let wild = issue(&ca, "*.example.com", &["*.example.com"], KeyType::Rsa2048);
        let body = format!("{}{}", wild.key_pem, wild.chain_pem());
        let now = crate::certs::now_unix();
        assert!(validate("WILDCARD.example.com.pem", body.as_bytes(), true, now).is_ok());
        assert_eq!(
            validate("star.example.com.pem", body.as_bytes(), true, now)
                .unwrap_err()
                .code(),
            "bad_filename"
        );
        // Ten years on, it is expired: accepted with a warning, or refused by setting.
        let later = now + 3650 * 86400;
        let staged = validate("WILDCARD.example.com.pem", body.as_bytes(), true, later).unwrap();
        assert!(staged.warning.unwrap().contains("expired"));
        assert_eq!(
            validate("WILDCARD.example.com.pem", body.as_bytes(), false, later)
                .unwrap_err()
                .code(),
            "cert_expired"
        );
    }
}
