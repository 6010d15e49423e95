//! AWS credentials. What the backend's configuration names comes first, so that several
//! backends can use different accounts: its `credentials_file` (AWS's INI format; a
//! service has no home directory), profile `profile` or `default`, which must be there;
//! else its `profile` in the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
//! default `~/.aws/credentials`) or config file (`AWS_CONFIG_FILE`, default
//! `~/.aws/config`, where profiles are `[profile NAME]`). With neither configured, the
//! usual places: the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), else profile `AWS_PROFILE` (default `default`) of those files.
//! Read again for every call, so that rotated keys are taken without a restart.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The credentials for a backend with this `profile` and `credentials_file`; `var`
/// reads the environment (a function, so that tests give their own).
pub fn load(
    profile: Option<&str>,
    credentials_file: Option<&Path>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Credentials, String> {
    let nonempty = |k: &str| var(k).filter(|v| !v.is_empty());
    if let Some(path) = credentials_file {
        let name = profile.unwrap_or("default");
        return match std::fs::read_to_string(path) {
            Ok(text) => parse_profile(&Zeroizing::new(text), name).ok_or_else(|| {
                format!(
                    "credentials_file {}: no profile {name:?} with aws_access_key_id and \
                     aws_secret_access_key",
                    path.display()
                )
            }),
            Err(e) => Err(format!("credentials_file {}: {e}", path.display())),
        };
    }
    if profile.is_none()
        && let (Some(id), Some(secret)) = (
            nonempty("AWS_ACCESS_KEY_ID"),
            nonempty("AWS_SECRET_ACCESS_KEY"),
        )
    {
        return Ok(Credentials {
            access_key_id: id,
            secret_access_key: Zeroizing::new(secret),
            session_token: nonempty("AWS_SESSION_TOKEN").map(Zeroizing::new),
        });
    }
    let name = profile
        .map(str::to_string)
        .or_else(|| nonempty("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let home = nonempty("HOME").map(PathBuf::from);
    let file = |key: &str, default: &str| {
        nonempty(key)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(default)))
    };
    let config_section = if name == "default" {
        name.clone()
    } else {
        format!("profile {name}")
    };
    for (path, section) in [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            &name,
        ),
        (file("AWS_CONFIG_FILE", ".aws/config"), &config_section),
    ] {
        let Some(path) = path else { continue };
        if let Some(c) = from_file(&path, section)? {
            return Ok(c);
        }
    }
    Err(format!(
        "no AWS credentials: no profile {name:?} with aws_access_key_id and \
         aws_secret_access_key in the credentials or config file{}",
        if profile.is_none() {
            ", and no AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        } else {
            ""
        }
    ))
}

/// The keys of `[section]` in an INI file, if the file and the section have them.
fn from_file(path: &Path, section: &str) -> Result<Option<Credentials>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    Ok(parse_profile(&text, section))
}

/// Profile `section`'s static keys in the text of an AWS credentials or config file.
pub fn parse_profile(text: &str, section: &str) -> Option<Credentials> {
    let mut inside = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().to_string();
        match key.trim() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(Zeroizing::new(value)),
            "aws_session_token" => token = Some(Zeroizing::new(value)),
            _ => {}
        }
    }
    Some(Credentials {
        access_key_id: id.filter(|v| !v.is_empty())?,
        secret_access_key: secret.filter(|v| !v.is_empty())?,
        session_token: token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_environment_when_nothing_is_configured() {
        let vars = [
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "session"),
        ];
        let c = load(None, None, &env(&vars)).unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key.as_str(), "secret");
        assert_eq!(
            c.session_token.as_deref().map(String::as_str),
            Some("session")
        );
        assert!(!format!("{c:?}").contains("secret"));
        // A configured profile wins over the environment's keys.
        let err = load(Some("other"), None, &env(&vars)).unwrap_err();
        assert!(err.contains("\"other\""), "{err}");
    }

    #[test]
    fn profiles_of_the_credentials_and_config_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = D\naws_secret_access_key = ds\n\n# comment\n[ops]\naws_access_key_id=O\naws_secret_access_key=os\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile cfg]\nregion = eu-west-1\naws_access_key_id = C\naws_secret_access_key = cs\n",
        )
        .unwrap();
        let (cp, fp) = (creds.display().to_string(), config.display().to_string());
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", cp.as_str()),
            ("AWS_CONFIG_FILE", fp.as_str()),
        ];
        assert_eq!(load(None, None, &env(&files)).unwrap().access_key_id, "D");
        assert_eq!(
            load(Some("ops"), None, &env(&files)).unwrap().access_key_id,
            "O"
        );
        assert_eq!(
            load(Some("cfg"), None, &env(&files)).unwrap().access_key_id,
            "C"
        );
        // AWS_PROFILE when nothing is configured; the configured profile otherwise.
        let mut with_profile = files.to_vec();
        with_profile.push(("AWS_PROFILE", "ops"));
        assert_eq!(
            load(None, None, &env(&with_profile)).unwrap().access_key_id,
            "O"
        );
        assert_eq!(
            load(Some("cfg"), None, &env(&with_profile))
                .unwrap()
                .access_key_id,
            "C"
        );
        // The backend's own file wins over the environment, and must hold the profile.
        let own = dir.path().join("own");
        std::fs::write(
            &own,
            "[default]\naws_access_key_id = F\naws_secret_access_key = fs\n",
        )
        .unwrap();
        let mut with_keys = with_profile.clone();
        with_keys.push(("AWS_ACCESS_KEY_ID", "E"));
        with_keys.push(("AWS_SECRET_ACCESS_KEY", "es"));
        assert_eq!(
            load(None, Some(&own), &env(&with_keys))
                .unwrap()
                .access_key_id,
            "F"
        );
        let err = load(Some("ops"), Some(&own), &env(&files)).unwrap_err();
        assert!(err.contains("\"ops\""), "{err}");
        let err = load(None, Some(&dir.path().join("missing")), &env(&with_keys)).unwrap_err();
        assert!(err.contains("missing"), "{err}");
        let err = load(Some("nobody"), None, &env(&files)).unwrap_err();
        assert!(err.contains("\"nobody\""), "{err}");
        // A section with half the keys is no credentials.
        assert!(parse_profile("[x]\naws_access_key_id = A\n", "x").is_none());
    }
}
