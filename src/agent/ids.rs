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
