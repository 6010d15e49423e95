//! Operator credentials: passwords stored as PBKDF2-HMAC-SHA256 hashes, bearer tokens
//! that are random and stored only as their SHA-256, generated passwords and ids.

use std::num::NonZeroU32;

use aws_lc_rs::{pbkdf2, rand};

use crate::certs::{hex, unhex};

/// OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
const PBKDF2_ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes).expect("the system random number generator failed");
    bytes
}

/// `pbkdf2-sha256$ITERATIONS$SALT$HASH` (hex).
pub fn hash_password(password: &str) -> String {
    let salt: [u8; SALT_LEN] = random();
    let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero");
    let mut out = [0u8; HASH_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "pbkdf2-sha256${PBKDF2_ITERATIONS}${}${}",
        hex(&salt),
        hex(&out)
    )
}

/// Checks a password against a stored hash, in constant time.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let ["pbkdf2-sha256", iterations, salt, hash] = parts.as_slice() else {
        return false;
    };
    let (Some(iterations), Some(salt), Some(hash)) = (
        iterations.parse::<u32>().ok().and_then(NonZeroU32::new),
        unhex(salt),
        unhex(hash),
    ) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// A new bearer token and the hash to store for it.
pub fn new_token() -> (String, String) {
    let token = hex(&random::<32>());
    let hash = token_hash(&token);
    (token, hash)
}

/// What is stored for a token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    crate::certs::sha256_hex(token.as_bytes())
}

/// A strong password for `controller user add`: 24 characters from 62 (142 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        for b in random::<32>() {
            // Rejection sampling: 248 = 4 * 62, so every character is equally likely.
            if b < 248 && out.len() < 24 {
                out.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// A user name the controller does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user name {0:?}: 1 to 64 letters, digits, '.', '_', '-' or '@'")]
pub struct BadUserName(pub String);

/// Checks an operator name: 1 to 64 letters, digits, `.`, `_`, `-` or `@` (after trimming).
pub fn check_user_name(name: &str) -> Result<&str, BadUserName> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(name)
    } else {
        Err(BadUserName(name.to_string()))
    }
}

/// A plain name (of an appliance, a key pair, a cluster, a region, a flavor, a
/// template): 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A random (version 4) UUID.
pub fn new_id() -> String {
    let mut b: [u8; 16] = random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_tokens_ids() {
        let stored = hash_password("correct horse");
        assert!(stored.starts_with("pbkdf2-sha256$600000$"));
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("correct horsf", &stored));
        assert!(!verify_password("correct horse", "plain"));
        assert!(!verify_password("x", "pbkdf2-sha256$0$00$00"));
        assert_ne!(hash_password("same"), hash_password("same"), "salted");

        let (token, hash) = new_token();
        assert_eq!(token.len(), 64);
        assert_eq!(token_hash(&token), hash);
        assert_ne!(token, hash);

        let p = generate_password();
        assert_eq!(p.len(), 24);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(p, generate_password());

        assert_eq!(check_user_name(" ops-1@site "), Ok("ops-1@site"));
        for bad in ["", "a b", &"x".repeat(65), "é"] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }

        let id = new_id();
        assert!(crate::agent::ids::InstanceId::parse(&id).is_some(), "{id}");
        assert_eq!(&id[14..15], "4");
    }
}
