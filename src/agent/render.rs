//! Turning uploaded configurations into what the daemons run: placeholders, the managed
//! parts the agent owns (stunnel's pid file and daemon mode, haproxy's custom 503), and
//! the checks that can be made without running anything. Pure functions.
//!
//! Placeholders: `{MYIP}` is the appliance's management address, `{CERTS}` this
//! instance's certificate directory, `{CUSTOM503}` its custom 503 file.

use std::net::IpAddr;
use std::path::Path;

/// What placeholders stand for in one instance.
#[derive(Debug, Clone)]
pub struct Placeholders<'a> {
    pub my_ip: Option<IpAddr>,
    pub certs_dir: &'a Path,
    pub custom503: &'a Path,
}

/// Why an uploaded configuration was refused before any daemon saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// Replaces the placeholders. `{MYIP}` without a known management address is an error.
pub fn substitute(text: &str, p: &Placeholders<'_>) -> Result<String, RenderError> {
    let mut out = text.replace("{CERTS}", &p.certs_dir.display().to_string());
    out = out.replace("{CUSTOM503}", &p.custom503.display().to_string());
    if out.contains("{MYIP}") {
        let ip = p.my_ip.ok_or_else(|| {
            RenderError(
                "{MYIP} is used but the management address is unknown: set management_address"
                    .into(),
            )
        })?;
        out = out.replace("{MYIP}", &ip.to_string());
    }
    Ok(out)
}

/// Renders an haproxy configuration. With a custom 503 page, `errorfile 503` is added to
/// every `defaults` section (a section's own `errorfile 503` comes later and wins), or as
/// a `defaults` section before the first proxy when there is none.
pub fn render_haproxy(
    text: &str,
    p: &Placeholders<'_>,
    has_custom503: bool,
) -> Result<String, RenderError> {
    let body = substitute(text, p)?;
    if !has_custom503 {
        return Ok(body);
    }
    let errorfile = format!("    errorfile 503 {}", p.custom503.display());
    let is_section = |line: &str, names: &[&str]| {
        let first = line.split_whitespace().next().unwrap_or("");
        !line.starts_with(char::is_whitespace) && names.contains(&first)
    };
    let mut out = String::with_capacity(body.len() + 128);
    let has_defaults = body.lines().any(|l| is_section(l, &["defaults"]));
    let mut inserted = false;
    for line in body.lines() {
        if !has_defaults && !inserted && is_section(line, &["frontend", "backend", "listen"]) {
            out.push_str("defaults\n");
            out.push_str(&errorfile);
            out.push_str("\n\n");
            inserted = true;
        }
        out.push_str(line);
        out.push('\n');
        if has_defaults && is_section(line, &["defaults"]) {
            out.push_str(&errorfile);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Global stunnel options the agent manages itself.
const STUNNEL_MANAGED: [&str; 2] = ["pid", "foreground"];
/// Options naming files that must exist when stunnel starts.
const STUNNEL_FILES: [&str; 6] = ["cert", "key", "CAfile", "CApath", "CRLfile", "CRLpath"];

/// Checks an stunnel configuration as far as it can be without running stunnel:
/// syntax (sections and `key = value` lines), no option the agent manages, at least one
/// service, and every referenced file present. Then renders it with the managed globals.
pub fn render_stunnel(
    text: &str,
    p: &Placeholders<'_>,
    pid_file: &Path,
    file_exists: impl Fn(&str) -> bool,
) -> Result<String, RenderError> {
    let body = substitute(text, p)?;
    let mut services = 0;
    let mut section: Option<String> = None;
    let mut problems = Vec::new();
    for (n, raw) in body.lines().enumerate() {
        let line = raw.trim();
        let n = n + 1;
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            match name.strip_suffix(']') {
                Some(name) if !name.trim().is_empty() => {
                    section = Some(name.trim().to_string());
                    services += 1;
                }
                _ => problems.push(format!("line {n}: malformed section header {line:?}")),
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            problems.push(format!(
                "line {n}: expected \"option = value\", found {line:?}"
            ));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            problems.push(format!("line {n}: missing option name"));
        }
        if section.is_none() && STUNNEL_MANAGED.iter().any(|m| m.eq_ignore_ascii_case(key)) {
            problems.push(format!(
                "line {n}: \"{key}\" is managed by the agent; remove it"
            ));
        }
        if STUNNEL_FILES.iter().any(|f| f.eq_ignore_ascii_case(key)) && !file_exists(value) {
            problems.push(format!("line {n}: {key} = {value}: no such file"));
        }
    }
    if services == 0 {
        problems.push("no service section ([name]) defined".into());
    }
    if !problems.is_empty() {
        return Err(RenderError(problems.join("\n")));
    }
    Ok(format!(
        "; rendered by applianced: the first two options are managed by the agent\npid = {}\nforeground = no\n{body}{}",
        pid_file.display(),
        if body.ends_with('\n') { "" } else { "\n" }
    ))
}

/// The values of the `accept` options of a stunnel configuration, in service order.
fn accept_values(config: &str) -> impl Iterator<Item = &str> {
    config.lines().filter_map(|l| {
        let (k, v) = l.split_once('=')?;
        k.trim().eq_ignore_ascii_case("accept").then(|| v.trim())
    })
}

/// Where to check that stunnel accepts connections: each `accept` address, with a bare
/// port or a wildcard address checked on loopback. Host names are skipped.
pub fn stunnel_accept_addresses(config: &str) -> Vec<std::net::SocketAddr> {
    let loopback = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    accept_values(config)
        .filter_map(|v| match v.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => Some(loopback(a.port())),
            Ok(a) => Some(a),
            Err(_) => v.parse().ok().map(loopback),
        })
        .collect()
}

/// The listening sockets stunnel would bind for a rendered configuration, in service
/// order, when every `accept` names an explicit address and port (`None` otherwise: a
/// bare port or a host name is left for stunnel to bind).
pub fn stunnel_listen_sockets(config: &str) -> Option<Vec<std::net::SocketAddr>> {
    accept_values(config).map(|v| v.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Placeholders<'static> {
        Placeholders {
            my_ip: Some("10.0.0.2".parse().unwrap()),
            certs_dir: Path::new("/s/i/certificates"),
            custom503: Path::new("/s/i/custom503.http"),
        }
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            substitute("bind {MYIP}:443 ssl crt {CERTS}/a.pem", &p()).unwrap(),
            "bind 10.0.0.2:443 ssl crt /s/i/certificates/a.pem"
        );
        let mut q = p();
        q.my_ip = None;
        assert!(substitute("bind {MYIP}:1", &q).is_err());
        assert_eq!(substitute("bind 1.2.3.4:1", &q).unwrap(), "bind 1.2.3.4:1");
    }

    #[test]
    fn custom503_goes_into_defaults() {
        let cfg = "global\n    daemon\ndefaults\n    mode http\nfrontend fe\n    bind :80\n";
        let r = render_haproxy(cfg, &p(), true).unwrap();
        assert_eq!(
            r,
            "global\n    daemon\ndefaults\n    errorfile 503 /s/i/custom503.http\n    mode http\nfrontend fe\n    bind :80\n"
        );
        let no_defaults = "global\n    daemon\nlisten l\n    bind :80\n";
        let r = render_haproxy(no_defaults, &p(), true).unwrap();
        assert!(
            r.contains("defaults\n    errorfile 503 /s/i/custom503.http\n\nlisten l"),
            "{r}"
        );
        assert_eq!(render_haproxy(cfg, &p(), false).unwrap(), cfg);
    }

    #[test]
    fn stunnel_checks() {
        let ok = "; comment\n[https]\naccept = {MYIP}:443\nconnect = 127.0.0.1:80\ncert = {CERTS}/www.pem\n";
        let r = render_stunnel(ok, &p(), Path::new("/run/x/stunnel.pid"), |f| {
            f == "/s/i/certificates/www.pem"
        })
        .unwrap();
        assert!(r.starts_with("; rendered by applianced"));
        assert!(r.contains("pid = /run/x/stunnel.pid\nforeground = no\n"));
        assert!(r.contains("accept = 10.0.0.2:443"));

        let missing = render_stunnel(ok, &p(), Path::new("/p"), |_| false).unwrap_err();
        assert!(missing.0.contains("no such file"), "{missing}");
        let managed = render_stunnel(
            "pid = /tmp/x\n[a]\naccept=1\n",
            &p(),
            Path::new("/p"),
            |_| true,
        )
        .unwrap_err();
        assert!(managed.0.contains("managed by the agent"));
        let syntax = render_stunnel(
            "[a]\nthis is not an option\n",
            &p(),
            Path::new("/p"),
            |_| true,
        )
        .unwrap_err();
        assert!(syntax.0.contains("line 2"));
        let empty = render_stunnel("; nothing\n", &p(), Path::new("/p"), |_| true).unwrap_err();
        assert!(empty.0.contains("no service"));
        assert_eq!(
            stunnel_listen_sockets("[a]\naccept = 127.0.0.2:443\n[b]\naccept = [::1]:9\n"),
            Some(vec![
                "127.0.0.2:443".parse().unwrap(),
                "[::1]:9".parse().unwrap()
            ])
        );
        assert_eq!(stunnel_listen_sockets("[a]\naccept = 443\n"), None);
        assert_eq!(
            stunnel_accept_addresses(
                "[a]\naccept = 0.0.0.0:8443\n[b]\naccept = stunnel.example:1\n"
            ),
            vec!["127.0.0.1:8443".parse().unwrap()]
        );
        let accepts = stunnel_accept_addresses(
            "[a]\naccept = 127.0.0.2:443\n[b]\naccept=8443\n[c]\naccept = [::1]:9\nconnect = 1.2.3.4:5\n",
        );
        assert_eq!(
            accepts,
            vec![
                "127.0.0.2:443".parse().unwrap(),
                "127.0.0.1:8443".parse().unwrap(),
                "[::1]:9".parse().unwrap()
            ]
        );
    }
}
