//! `applianced config check`, black-box: both roles, good and broken configurations.

mod common;

use std::process::Command;

use common::*;

fn check(role: &str, path: &std::path::Path) -> (i32, String) {
    let out = Command::new(bin())
        .args(["config", "check", role])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn controller_configuration_is_checked_with_its_certificates() {
    let pki = Pki::new();
    let server = pki.server("ctl", "controller.example");
    let other = pki.server("other", "other.example");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("controller.toml");
    let write = |cert: &std::path::Path, key: &std::path::Path, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"{d}\"\n[database]\nurl = \"sqlite://{d}/c.db\"\n[[listeners]]\naddress = \"127.0.0.1:8443\"\nzone = \"admin\"\ncert = \"{c}\"\nkey = \"{k}\"\n[[listeners]]\naddress = \"127.0.0.1:8444\"\nzone = \"appliance\"\ncert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{ca}\"\n{extra}",
                d = dir.path().display(),
                c = cert.display(),
                k = key.display(),
                ca = pki.ca_cert().display()
            ),
        )
        .unwrap()
    };

    write(&server.cert, &server.key, "");
    let (code, text) = check("--controller", &cfg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK (2 listeners)"), "{text}");

    write(
        &server.cert,
        &server.key,
        "[appliances]\nttl_min_minutes = 500\n[pki]\nrotate_before_days = 40\n",
    );
    let (code, text) = check("--controller", &cfg);
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains("appliances.ttl_min_minutes") && text.contains("pki.rotate_before_days"),
        "{text}"
    );

    write(
        &server.cert,
        &server.key,
        "[backend]\nkind = \"openstack\"\n",
    );
    let (code, text) = check("--controller", &cfg);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("backend.kind"), "{text}");

    write(&server.cert, &other.key, "");
    let (code, text) = check("--controller", &cfg);
    assert_eq!(code, 79, "{text}");
    assert!(
        text.contains("listeners[0].cert") && text.contains("do not match"),
        "{text}"
    );
}

#[test]
fn agent_configuration_check_reports_keys() {
    let pki = Pki::new();
    let server = pki.server("server", "agent-1");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n[server]\nlisten = [\"127.0.0.1:9\"]\ncert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{ca}\"\n",
            d = dir.path().display(),
            c = server.cert.display(),
            k = server.key.display(),
            ca = pki.ca_cert().display()
        ),
    )
    .unwrap();
    let (code, text) = check("--agent", &cfg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("agent-1"), "{text}");

    let broken =
        std::fs::read_to_string(&cfg).unwrap() + "[instances]\nservice_manager = \"upstart\"\n";
    std::fs::write(&cfg, broken).unwrap();
    let (code, text) = check("--agent", &cfg);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("instances.service_manager"), "{text}");
}
