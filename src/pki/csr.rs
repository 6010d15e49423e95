//! Certificate signing requests from appliances that keep their own keys: parsed,
//! their signature verified (proof the requester holds the key), and their key held to
//! a minimum strength. Pure; the CA signs the key it returns.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest CSR accepted (PEM).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// The key a request asks a certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedKey {
    /// SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
    /// `ecdsa-p256`, `ecdsa-p384`, `ed25519` or `rsa-BITS`.
    pub algorithm: String,
    /// SHA-256 of the SubjectPublicKeyInfo, lower-case hex.
    pub fingerprint: String,
}

/// Parses a PEM CSR, verifies its signature and checks its key.
pub fn parse(pem: &str) -> Result<RequestedKey, String> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(format!(
            "the certificate signing request is larger than {MAX_CSR_BYTES} bytes"
        ));
    }
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| "the certificate signing request is not PEM".to_string())?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(format!(
            "expected a CERTIFICATE REQUEST, found a PEM {:?} block",
            block.label
        ));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("the certificate signing request does not parse: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate signing request".into());
    }
    let spki = &csr.certification_request_info.subject_pki;
    let oid = &spki.algorithm.algorithm;
    let algorithm = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => "ecdsa-p256".to_string(),
            Some(c) if c == OID_NIST_EC_P384 => "ecdsa-p384".to_string(),
            _ => return Err("an EC key must be on P-256 or P-384".into()),
        }
    } else if *oid == OID_SIG_ED25519 {
        "ed25519".to_string()
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err("the RSA key does not parse".into()),
        };
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "the RSA key has {bits} bits: too weak (at least {MIN_RSA_BITS})"
            ));
        }
        format!("rsa-{bits}")
    } else {
        return Err(format!(
            "unsupported key algorithm {oid}: use ECDSA P-256/P-384, Ed25519 or RSA"
        ));
    };
    // After the key's checks: a weak key's signature would not verify either.
    csr.verify_signature().map_err(|_| {
        "the certificate signing request's signature does not verify with its key".to_string()
    })?;
    Ok(RequestedKey {
        spki: spki.raw.to_vec(),
        fingerprint: crate::certs::sha256_hex(spki.raw),
        algorithm,
    })
}

/// The size of an RSA modulus (big-endian, maybe with leading zeros), in bits.
fn modulus_bits(modulus: &[u8]) -> usize {
    let digits: Vec<u8> = modulus.iter().copied().skip_while(|b| *b == 0).collect();
    match digits.first() {
        Some(first) => digits.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn csr_for(key: &rcgen::KeyPair) -> String {
        rcgen::CertificateParams::default()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn accepts_strong_keys_and_names_them() {
        for (alg, name) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ecdsa-p256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "ecdsa-p384"),
            (&rcgen::PKCS_ED25519, "ed25519"),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let got = parse(&csr_for(&key)).unwrap();
            assert_eq!(got.algorithm, name);
            assert_eq!(
                got.spki,
                rcgen::PublicKeyData::subject_public_key_info(&key)
            );
        }
    }

    #[test]
    fn refuses_weak_rsa_keys_and_forged_signatures() {
        // aws-lc will not sign with a 1024-bit key: openssl makes the weak request.
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=weak",
            ])
            .arg("-keyout")
            .arg(dir.path().join("k"))
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = parse(&String::from_utf8_lossy(&out.stdout)).unwrap_err();
        assert!(err.contains("1024 bits: too weak"), "{err}");

        // One request's key with another one's signature.
        let a = rcgen::KeyPair::generate().unwrap();
        let mut der = rcgen::CertificateParams::default()
            .serialize_request(&a)
            .unwrap()
            .der()
            .to_vec();
        let n = der.len();
        der[n - 5] ^= 0x55;
        let forged = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let err = parse(&forged).unwrap_err();
        assert!(err.contains("signature") || err.contains("parse"), "{err}");
        assert!(parse("not a csr").is_err());
        assert!(parse(&"A".repeat(MAX_CSR_BYTES + 1)).is_err());
    }

    #[test]
    fn counts_modulus_bits() {
        assert_eq!(modulus_bits(&[0, 0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x01, 0]), 9);
        assert_eq!(modulus_bits(&[]), 0);
    }
}
