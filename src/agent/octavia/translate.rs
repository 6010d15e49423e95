//! Octavia's files as the agent stores them: its rendered haproxy configuration and its
//! crt-lists name paths under Octavia's `base_path` and `base_cert_dir`; they are mapped
//! onto the load balancer's own instance directories, so the result names nothing
//! outside them (the directive policy's rule). Pure functions.
//!
//! | Octavia                                   | here                                  |
//! |-------------------------------------------|---------------------------------------|
//! | `BASE_CERT_DIR/<lb>/<file>`               | `STATE/instances/<lb>/certificates/<file>` |
//! | `BASE_PATH/<lb>.sock` (stats socket)      | `RUN/<lb>/octavia-stats.sock`          |
//! | `BASE_PATH/<lb>/servers-state`            | `RUN/<lb>/servers-state`               |
//! | `user`, `group`, `uid`, `gid`, `chroot`, `pidfile` | dropped: the agent runs haproxy as its own user, with its own pid file |
//! | `log /a/unix/socket ...`                  | dropped (a `log IP:PORT` stays)        |
//! | `external-check` (PING health monitors)   | refused: it runs a program             |

use std::path::Path;

use crate::agent::ids::CertName;

/// The stats socket's name in the instance's run directory (the heartbeat reads it).
pub const STATS_SOCKET: &str = "octavia-stats.sock";
/// Largest TLS session cache (entries, about 200 bytes each) a translated configuration
/// keeps.
pub const MAX_SSL_CACHE_ENTRIES: u64 = 100_000;
/// The server-state file's name in the instance's run directory.
pub const SERVER_STATE: &str = "servers-state";

/// Where Octavia's names point, for one load balancer.
#[derive(Debug, Clone)]
pub struct Layout<'a> {
    pub lb_id: &'a str,
    /// Octavia's `base_path` (`/var/lib/octavia`).
    pub base_path: &'a Path,
    /// Octavia's `base_cert_dir` (`/var/lib/octavia/certs`).
    pub base_cert_dir: &'a Path,
    /// The instance's certificate directory.
    pub certs_dir: &'a Path,
    /// The instance's run directory.
    pub run_dir: &'a Path,
    /// Highest global `maxconn` the host's file descriptor limit allows haproxy.
    pub max_global_maxconn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("line {line}: {path} is not a file of this load balancer")]
    ForeignPath { line: usize, path: String },
    #[error("line {line}: {directive} runs a program; PING health monitors are not supported")]
    RunsProgram { line: usize, directive: String },
    #[error("line {line}: a crt-list entry must be an absolute path: {entry:?}")]
    BadCrtListEntry { line: usize, entry: String },
}

impl Layout<'_> {
    fn cert_prefix(&self) -> String {
        format!("{}/{}/", self.base_cert_dir.display(), self.lb_id)
    }

    /// The instance's path for one of Octavia's, or None when it is not one of this load
    /// balancer's files.
    fn map_path(&self, path: &str) -> Option<String> {
        let base = self.base_path.display();
        if path == format!("{base}/{}.sock", self.lb_id) {
            return Some(self.run_dir.join(STATS_SOCKET).display().to_string());
        }
        if path == format!("{base}/{}/servers-state", self.lb_id) {
            return Some(self.run_dir.join(SERVER_STATE).display().to_string());
        }
        let name = path.strip_prefix(&self.cert_prefix())?;
        CertName::parse(name).map(|n| self.certs_dir.join(n.as_str()).display().to_string())
    }

    /// Whether a word names something under Octavia's directories (then it must map).
    fn names_octavia_path(&self, word: &str) -> bool {
        let under = |dir: &Path| {
            let dir = dir.display().to_string();
            word == dir || word.starts_with(&format!("{dir}/"))
        };
        under(self.base_path) || under(self.base_cert_dir)
    }
}

/// Translates Octavia's rendered haproxy configuration for its load balancer.
pub fn haproxy_config(config: &str, layout: &Layout<'_>) -> Result<String, TranslateError> {
    let mut out = String::with_capacity(config.len() + 256);
    let mut section = "";
    for (index, line) in config.lines().enumerate() {
        let number = index + 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        let directive = words.first().copied().unwrap_or("");
        if !line.starts_with(char::is_whitespace) && !directive.is_empty() {
            section = directive;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        match directive {
            // Octavia sizes the amphora's limits for its global maxconn; on a host with
            // a lower file descriptor limit haproxy would not start.
            "maxconn" if section == "global" => {
                let asked: u64 = words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                out.push_str(&format!(
                    "{indent}maxconn {}\n",
                    asked.min(layout.max_global_maxconn)
                ));
                continue;
            }
            "user" | "group" | "uid" | "gid" | "chroot" | "pidfile" => continue,
            "log" if words.get(1).is_some_and(|w| w.starts_with('/')) => continue,
            "external-check" | "insecure-fork-wanted" => {
                return Err(TranslateError::RunsProgram {
                    line: number,
                    directive: directive.into(),
                });
            }
            // Octavia sizes the TLS session cache from the amphora's free memory; on a
            // shared host that would take gigabytes.
            "tune.ssl.cachesize" => {
                let asked: u64 = words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                out.push_str(&format!(
                    "{indent}tune.ssl.cachesize {}\n",
                    asked.min(MAX_SSL_CACHE_ENTRIES)
                ));
                continue;
            }
            "option" if words.get(1) == Some(&"external-check") => {
                return Err(TranslateError::RunsProgram {
                    line: number,
                    directive: "option external-check".into(),
                });
            }
            _ => {}
        }
        if words.iter().any(|w| layout.names_octavia_path(w)) {
            let mut mapped = Vec::with_capacity(words.len());
            for word in &words {
                if layout.names_octavia_path(word) {
                    mapped.push(layout.map_path(word).ok_or_else(|| {
                        TranslateError::ForeignPath {
                            line: number,
                            path: (*word).into(),
                        }
                    })?);
                } else {
                    mapped.push((*word).to_string());
                }
            }
            out.push_str(indent);
            out.push_str(&mapped.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

/// Whether an uploaded certificate-directory file is a crt-list (text, one absolute path
/// a line, with optional `[options]` and SNI filters) rather than PEM.
pub fn is_crt_list(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    !text.contains("-----BEGIN")
        && text.lines().any(|l| !l.trim().is_empty())
        && text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .all(|l| l.starts_with('/'))
}

/// Translates a crt-list: every entry must be a file of this load balancer's
/// certificate directory.
pub fn crt_list(text: &str, layout: &Layout<'_>) -> Result<String, TranslateError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let (path, rest) = trimmed
            .split_once(char::is_whitespace)
            .unwrap_or((trimmed, ""));
        if !path.starts_with('/') {
            return Err(TranslateError::BadCrtListEntry {
                line: number,
                entry: trimmed.into(),
            });
        }
        let mapped = path
            .strip_prefix(&layout.cert_prefix())
            .and_then(CertName::parse)
            .map(|n| layout.certs_dir.join(n.as_str()).display().to_string())
            .ok_or_else(|| TranslateError::ForeignPath {
                line: number,
                path: path.into(),
            })?;
        out.push_str(&mapped);
        if !rest.is_empty() {
            out.push(' ');
            out.push_str(rest.trim());
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: &str = "6f6c36b1-0a4b-4b6a-9d42-1f0c5ad1c7e9";

    fn layout() -> Layout<'static> {
        Layout {
            lb_id: LB,
            base_path: Path::new("/var/lib/octavia"),
            base_cert_dir: Path::new("/var/lib/octavia/certs"),
            certs_dir: Path::new("/srv/state/instances/lb/certificates"),
            run_dir: Path::new("/run/applianced/lb"),
            max_global_maxconn: 7000,
        }
    }

    /// What Octavia 19's templater renders for an HTTP and a TERMINATED_HTTPS listener
    /// (abridged to the lines that name paths or identities).
    fn rendered() -> String {
        format!(
            "# Configuration for loadbalancer {LB}
global
    daemon
    user nobody
    log /run/rsyslog/octavia/log local0
    log /run/rsyslog/octavia/log local1 notice
    log 192.0.2.9:514 local2
    stats socket /var/lib/octavia/{LB}.sock mode 0666 level user
    server-state-file /var/lib/octavia/{LB}/servers-state
    maxconn 50000
    tune.ssl.cachesize 123456789

defaults
    log global
    retries 3

frontend 1f0c5ad1-0000-4b6a-9d42-6f6c36b10a4b
    maxconn 50000
    bind 127.0.0.5:443 ssl crt-list /var/lib/octavia/certs/{LB}/1f0c5ad1-0000-4b6a-9d42-6f6c36b10a4b.pem ca-file /var/lib/octavia/certs/{LB}/ab12.pem verify optional
    mode http
    log-format 12345\\ {LB}\\ %f\\ %{{+Q}}r
    default_backend pool:listener

backend pool:listener
    mode http
    load-server-state-from-file global
    server m1 127.0.0.1:8080 weight 1 check inter 5s fall 3 rise 2 ssl crt /var/lib/octavia/certs/{LB}/client.pem ca-file /var/lib/octavia/certs/{LB}/ca.pem
"
        )
    }

    #[test]
    fn maps_octavia_paths_into_the_instance() {
        let out = haproxy_config(&rendered(), &layout()).unwrap();
        assert!(!out.contains("/var/lib/octavia"), "{out}");
        assert!(
            !out.contains("user nobody") && !out.contains("/run/rsyslog"),
            "{out}"
        );
        assert!(out.contains("    log 192.0.2.9:514 local2\n"), "{out}");
        assert!(out.contains(
            "    stats socket /run/applianced/lb/octavia-stats.sock mode 0666 level user\n"
        ));
        assert!(out.contains("    server-state-file /run/applianced/lb/servers-state\n"));
        assert!(out.contains(
            "bind 127.0.0.5:443 ssl crt-list /srv/state/instances/lb/certificates/1f0c5ad1-0000-4b6a-9d42-6f6c36b10a4b.pem ca-file /srv/state/instances/lb/certificates/ab12.pem verify optional\n"
        ), "{out}");
        assert!(out.contains("ssl crt /srv/state/instances/lb/certificates/client.pem ca-file /srv/state/instances/lb/certificates/ca.pem\n"));
        // Lines without paths are kept byte for byte (log formats with braces included).
        assert!(out.contains(&format!("    log-format 12345\\ {LB}\\ %f\\ %{{+Q}}r\n")));
        assert!(
            out.contains("    maxconn 7000\n    tune.ssl.cachesize 100000\n"),
            "{out}"
        );
        // A proxy's own maxconn is not the process's.
        assert!(out.contains("frontend 1f0c5ad1-0000-4b6a-9d42-6f6c36b10a4b\n    maxconn 50000\n"));
    }

    #[test]
    fn refuses_other_load_balancers_files_and_programs() {
        let other = "6f6c36b1-0a4b-4b6a-9d42-000000000000";
        for (config, expected) in [
            (
                format!("frontend f\n  bind :443 ssl crt /var/lib/octavia/certs/{other}/x.pem\n"),
                TranslateError::ForeignPath {
                    line: 2,
                    path: format!("/var/lib/octavia/certs/{other}/x.pem"),
                },
            ),
            (
                format!("global\n  stats socket /var/lib/octavia/{other}.sock\n"),
                TranslateError::ForeignPath {
                    line: 2,
                    path: format!("/var/lib/octavia/{other}.sock"),
                },
            ),
            (
                format!(
                    "frontend f\n  bind :443 ssl crt /var/lib/octavia/certs/{LB}/../../x.pem\n"
                ),
                TranslateError::ForeignPath {
                    line: 2,
                    path: format!("/var/lib/octavia/certs/{LB}/../../x.pem"),
                },
            ),
            (
                "global\n  external-check\n".to_string(),
                TranslateError::RunsProgram {
                    line: 2,
                    directive: "external-check".into(),
                },
            ),
            (
                "backend b\n  option external-check\n".to_string(),
                TranslateError::RunsProgram {
                    line: 2,
                    directive: "option external-check".into(),
                },
            ),
        ] {
            assert_eq!(
                haproxy_config(&config, &layout()),
                Err(expected),
                "{config}"
            );
        }
        // Paths that are not Octavia's pass through; the directive policy judges them.
        let out = haproxy_config("frontend f\n  errorfile 503 /etc/passwd\n", &layout()).unwrap();
        assert!(out.contains("/etc/passwd"));
    }

    #[test]
    fn crt_lists() {
        let list = format!(
            "/var/lib/octavia/certs/{LB}/aa.pem\n/var/lib/octavia/certs/{LB}/bb.pem [alpn h2] www.example.com\n"
        );
        assert!(is_crt_list(list.as_bytes()));
        assert!(!is_crt_list(b"-----BEGIN CERTIFICATE-----\n"));
        assert!(!is_crt_list(b""));
        let out = crt_list(&list, &layout()).unwrap();
        assert_eq!(
            out,
            "/srv/state/instances/lb/certificates/aa.pem\n/srv/state/instances/lb/certificates/bb.pem [alpn h2] www.example.com\n"
        );
        assert_eq!(
            crt_list("/etc/ssl/private/x.pem\n", &layout()),
            Err(TranslateError::ForeignPath {
                line: 1,
                path: "/etc/ssl/private/x.pem".into()
            })
        );
    }
}
