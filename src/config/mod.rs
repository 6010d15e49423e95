//! Typed configuration: TOML files with `deny_unknown_fields`, human durations and sizes,
//! and validation that names the key and the value of every problem.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub mod agent;
pub mod controller;

/// A duration written as `"500ms"`, `"10s"`, `"5m"` or `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration such as \"500ms\", \"10s\", \"5m\""))?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "s" | "" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            other => {
                return Err(format!(
                    "unknown duration unit {other:?} in {s:?} (ms, s, m, h)"
                ));
            }
        };
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Secs(n) => Ok(HumanDuration::secs(n)),
        }
    }
}

/// One problem in a configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<String>,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn one(file: Option<&Path>, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.map(|p| p.display().to_string()),
            problems: vec![Problem {
                key: key.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self
            .file
            .as_deref()
            .map(|p| format!("{p}: "))
            .unwrap_or_default();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{prefix}{p}")?;
        }
        Ok(())
    }
}

/// Reads and parses a TOML file, turning a syntax or type error into a keyed problem.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(Some(path), "(file)", format!("cannot read: {e}")))?;
    parse_toml(&text).map_err(|(key, msg)| ConfigError::one(Some(path), &key, msg))
}

/// Parses TOML text; on error returns the key path (or `(syntax)`) and the message.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, (String, String)> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let key = e
            .span()
            .map(|span| key_at(text, span.start))
            .unwrap_or_else(|| "(syntax)".to_string());
        (key, e.message().trim().to_string())
    })
}

/// The `section.key` in force at byte offset `pos` of a TOML text (best effort, for messages).
fn key_at(text: &str, pos: usize) -> String {
    let mut section = String::new();
    let mut key = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            key.clear();
        } else if let Some((k, _)) = trimmed.split_once('=')
            && !trimmed.starts_with('#')
        {
            key = k.trim().to_string();
        }
        if offset + line.len() > pos {
            break;
        }
        offset += line.len();
    }
    match (section.is_empty(), key.is_empty()) {
        (true, true) => "(top level)".into(),
        (true, false) => key,
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            "10s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(10)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
        assert!("s".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn error_names_the_key() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: u32,
            #[serde(default)]
            sub: Sub,
        }
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Sub {
            b: Option<u32>,
        }
        let (key, msg) = parse_toml::<S>("a = 1\n[sub]\nb = \"x\"\n").unwrap_err();
        assert_eq!(key, "sub.b", "{msg}");
        let (key, msg) = parse_toml::<S>("a = 1\n[sub]\nc = 2\n").unwrap_err();
        assert!(key.starts_with("sub"), "{key}");
        assert!(msg.contains("unknown field"), "{msg}");
    }
}
