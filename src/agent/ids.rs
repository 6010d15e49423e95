//! Validated identifiers that end up in file system paths.

use std::fmt;

/// An instance (listener) id: a UUID, kept in lower case. Nothing else can reach the
/// file system, so no id can name a path outside its instance directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn parse(s: &str) -> Option<InstanceId> {
        let bytes = s.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let ok = bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
        ok.then(|| InstanceId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_only() {
        assert!(InstanceId::parse("7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7c").is_some());
        assert_eq!(
            InstanceId::parse("7E9F91EB-B3E6-4E3B-A1A7-D6F7FDC1DE7C")
                .unwrap()
                .as_str(),
            "7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7c"
        );
        for bad in [
            "",
            "..",
            "7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7",
            "7e9f91eb/b3e6-4e3b-a1a7-d6f7fdc1de7c",
            "7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7g",
            "../../../../../../../../../../etc/pa",
        ] {
            assert!(InstanceId::parse(bad).is_none(), "{bad}");
        }
    }
}

/// A file of an instance that the API can read, write or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceFile {
    Haproxy,
    Stunnel,
    Custom503,
    Certificate(CertName),
}

impl InstanceFile {
    /// The name of the file inside the instance directory.
    pub fn relative_path(&self) -> String {
        match self {
            InstanceFile::Haproxy => "haproxy.cfg".into(),
            InstanceFile::Stunnel => "stunnel.conf".into(),
            InstanceFile::Custom503 => "custom503.http".into(),
            InstanceFile::Certificate(name) => format!("certificates/{}", name.as_str()),
        }
    }
}

/// A certificate file name: letters, digits, `.`, `_` and `-`, not starting with a dot,
/// at most 255 bytes. Whether it ends in `.pem` and matches the certificate is checked
/// on upload (409 `bad_filename`), since that needs the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertName(String);

impl CertName {
    pub fn parse(s: &str) -> Option<CertName> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| CertName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod cert_name_tests {
    use super::*;

    #[test]
    fn safe_names_only() {
        for good in [
            "www.example.com.pem",
            "WILDCARD.example.com.pem",
            "a_b-c.pem",
            "noext",
        ] {
            assert!(CertName::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden.pem",
            "../x.pem",
            "a/b.pem",
            "a b.pem",
            "x%2f.pem",
            "é.pem",
        ] {
            assert!(CertName::parse(bad).is_none(), "{bad}");
        }
        assert!(CertName::parse(&"a".repeat(256)).is_none());
    }
}
