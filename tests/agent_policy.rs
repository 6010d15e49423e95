//! The directive policy and the daemons' privileges, black-box: the real agent (as root,
//! so each instance's daemons get their own user), the real haproxy and stunnel.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const ID: &str = "0b6f3e4c-6a55-4f60-9d51-6f7a3cbe1a10";
const OTHER: &str = "9a0c2d1e-7b8f-4c3d-a2e1-0f9e8d7c6b5a";

const CUSTOM_503: &str =
    "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nsorry, down\n";

/// A directory others may search, for files the daemons must reach.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// An haproxy that records every `haproxy -c` before running the real one.
fn haproxy_wrapper(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("checks.log");
    let wrapper = dir.join("haproxy");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" -c \"*) echo \"$*\" >> {} ;; esac\nexec haproxy \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    (wrapper, log)
}

struct Setup {
    _pki: Pki,
    server: Creds,
    agent: Agent,
    api: Client,
}

fn setup(toml: &str) -> Setup {
    let pki = Pki::new();
    let server = pki.server("server", "agent-1");
    let client = pki.client("client", "controller-1");
    let agent = Agent::start(AgentOptions::new(&pki, &server).toml(toml));
    let api = Client::new(&pki.ca_cert(), Some(&client));
    Setup {
        _pki: pki,
        server,
        agent,
        api,
    }
}

impl Setup {
    async fn put(&self, path: &str, body: &[u8]) -> Resp {
        let mut conn = self.api.connect(self.agent.addr).await.unwrap();
        conn.request("PUT", path, body, &[("accept", "application/json")])
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Resp {
        self.api.get(self.agent.addr, path).await.unwrap()
    }

    /// Uploads a bundle for www.example.com to instance `ID`; returns its PKI.
    async fn put_www_certificate(&self) -> Pki {
        let pki = Pki::new();
        let www = pki.issue(
            "www",
            "www.example.com",
            &["--server", "--san", "www.example.com"],
        );
        let r = self
            .put(
                &format!("/instances/{ID}/certificates/www.example.com.pem"),
                &www.bundle(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        pki
    }
}

fn defaults() -> &'static str {
    "defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n"
}

/// Uid and gid of the haproxy processes of instance `ID` (from /proc).
fn haproxy_ids() -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for pid in processes_with("haproxy") {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX)
        };
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.contains(ID) {
            found.push((field("Uid:"), field("Gid:")));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn every_directive_class_is_refused_with_its_line_and_never_reaches_the_checker() {
    let tools = shared_dir();
    let (wrapper, checks) = haproxy_wrapper(tools.path());
    let s = setup(&format!(
        "[instances]\nhaproxy = \"{}\"\n",
        wrapper.display()
    ));
    let inst = s.agent.state_dir().join("instances").join(ID);
    let run = s.agent.run_dir().join(ID);
    let other = s.agent.state_dir().join("instances").join(OTHER);
    let haproxy_cases: Vec<(String, &str)> = vec![
        ("global\n  chroot /var/empty\n".into(), "chroot"),
        ("global\n  user root\n".into(), "user"),
        ("global\n  group root\n".into(), "group"),
        ("global\n  uid 0\n".into(), "uid"),
        ("global\n  lua-load /tmp/x.lua\n".into(), "lua-load"),
        (
            "global\n  lua-prepend-path /tmp/?.lua\n".into(),
            "lua-prepend-path",
        ),
        (
            "global\n  insecure-fork-wanted\n".into(),
            "insecure-fork-wanted",
        ),
        ("global\n  external-check\n".into(), "external-check"),
        ("global\n  setenv SECRET x\n".into(), "setenv"),
        ("global\n  presetenv SECRET x\n".into(), "presetenv"),
        (
            "global\n  stats socket /run/admin.sock level admin\n".into(),
            "stats socket",
        ),
        ("global\n  log /dev/log local0\n".into(), "log"),
        (
            "global\n  server-state-file /var/lib/haproxy/state\n".into(),
            "server-state-file",
        ),
        (
            "global\n  ssl-dh-param-file /etc/ssl/dh.pem\n".into(),
            "ssl-dh-param-file",
        ),
        ("global\n  pidfile /run/other.pid\n".into(), "pidfile"),
        ("global\n  crt-base /etc/ssl/private\n".into(), "crt-base"),
        ("global\nprogram sh\n".into(), "program section"),
        (
            format!("{}  errorfile 503 /etc/passwd\n", defaults()),
            "errorfile",
        ),
        (
            "http-errors e\n  errorfile 503 /etc/shadow\n".into(),
            "errorfile",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1\n  http-request return status 200 file /etc/shadow\n",
                defaults()
            ),
            "http-request file",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1\n  http-request return status 200 lf-file /etc/shadow\n",
                defaults()
            ),
            "http-request lf-file",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1\n  http-response return status 200 file /etc/shadow\n",
                defaults()
            ),
            "http-response file",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1\n  http-request set-header x %[env(HOME)]\n",
                defaults()
            ),
            "env()",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1\n  http-request set-header x \"${{HOME}}\"\n",
                defaults()
            ),
            "http-request",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1 ssl crt /etc/ssl/private/k.pem\n",
                defaults()
            ),
            "bind crt",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1 ssl crt-list /etc/list\n",
                defaults()
            ),
            "bind crt-list",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1 ssl crt {{CERTS}}/a.pem ca-file /etc/ssl/ca.pem\n",
                defaults()
            ),
            "bind ca-file",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1 ssl crt {{CERTS}}/a.pem crl-file /etc/crl.pem\n",
                defaults()
            ),
            "bind crl-file",
        ),
        (
            format!("{}frontend fe\n  bind /run/other.sock\n", defaults()),
            "bind",
        ),
        (format!("{}frontend fe\n  bind fd@3\n", defaults()), "bind"),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1\n  acl a src -f /etc/hosts\n",
                defaults()
            ),
            "acl -f",
        ),
        (
            format!(
                "{}frontend fe\n  bind 127.0.0.1:1\n  use_backend %[req.hdr(host),map(/etc/passwd,b)]\n",
                defaults()
            ),
            "map()",
        ),
        (
            format!("{}backend b\n  option external-check\n", defaults()),
            "option external-check",
        ),
        (
            format!(
                "{}backend b\n  external-check command /bin/true\n",
                defaults()
            ),
            "external-check",
        ),
        (
            format!(
                "{}backend b\n  server s 127.0.0.1:443 ssl ca-file /etc/ssl/ca.pem\n",
                defaults()
            ),
            "server ca-file",
        ),
        (
            format!(
                "{}backend b\n  server s 127.0.0.1:443 ssl crt /etc/ssl/me.pem\n",
                defaults()
            ),
            "server crt",
        ),
        (
            format!("{}backend b\n  server s /run/docker.sock\n", defaults()),
            "server",
        ),
        (
            format!(
                "{}listen l\n  bind 127.0.0.1:1\n  filter spoe config /etc/spoe.conf\n",
                defaults()
            ),
            "filter config",
        ),
        ("peers p\n  peer a /run/peer.sock\n".into(), "peer"),
        (
            "resolvers r\n  nameserver a /run/dns.sock\n".into(),
            "nameserver",
        ),
        (
            "ring r\n  server s 127.0.0.1:514 ssl ca-file /etc/ssl/ca.pem\n".into(),
            "server ca-file",
        ),
        // Normalised: `..` and `//` out of the instance, or into another instance.
        (
            format!(
                "{}  errorfile 503 {}/certificates/../../../../etc/passwd\n",
                defaults(),
                inst.display()
            ),
            "errorfile",
        ),
        (
            format!(
                "{}  errorfile 503 {}/custom503.http\n",
                defaults(),
                other.display()
            ),
            "errorfile",
        ),
        (
            format!("{}  errorfile 503 //etc//passwd\n", defaults()),
            "errorfile",
        ),
        // Quoting and escapes as haproxy reads them.
        (
            format!("{}  errorfile 503 \"/etc/\"passwd\n", defaults()),
            "errorfile",
        ),
        (
            format!("{}  errorfile 503 \\x2fetc/passwd\n", defaults()),
            "errorfile",
        ),
    ];
    for (config, directive) in &haproxy_cases {
        let r = s
            .put(&format!("/instances/{ID}/haproxy"), config.as_bytes())
            .await;
        assert_eq!(r.status, 409, "{config}\n{}", r.body);
        let v = r.json();
        assert_eq!(v["code"], "forbidden_directive", "{config}");
        let line = config.lines().count();
        let expected = format!("line {line}: {directive}:");
        assert!(
            v["message"].as_str().unwrap().contains(&expected),
            "{config}\nwanted {expected:?} in {v}"
        );
        assert!(v["details"].as_str().unwrap().contains(&expected), "{v}");
    }
    let stunnel_cases = [
        ("exec = /bin/sh", "exec"),
        ("execArgs = sh -c id", "execArgs"),
        ("pty = yes", "pty"),
        ("output = /var/log/stunnel.log", "output"),
        ("chroot = /var/lib/stunnel4", "chroot"),
        ("setuid = root", "setuid"),
        ("setgid = root", "setgid"),
        ("include = /etc/stunnel", "include"),
        ("CAfile = /etc/ssl/certs/ca-certificates.crt", "CAfile"),
        ("CApath = /etc/ssl/certs", "CApath"),
        ("CRLfile = /etc/crl.pem", "CRLfile"),
        ("cert = /etc/ssl/private/k.pem", "cert"),
        ("key = /etc/ssl/private/k.pem", "key"),
        ("engine = dynamic", "engine"),
        ("engineCtrl = SO_PATH:/tmp/evil.so", "engineCtrl"),
    ];
    for (option, directive) in stunnel_cases {
        let config = format!("[svc]\naccept = 127.0.0.1:1\nconnect = 127.0.0.1:2\n{option}\n");
        let r = s
            .put(&format!("/instances/{ID}/stunnel"), config.as_bytes())
            .await;
        assert_eq!(r.status, 409, "{option}: {}", r.body);
        let v = r.json();
        assert_eq!(v["code"], "forbidden_directive", "{option}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains(&format!("line 4: {directive}:")),
            "{v}"
        );
    }
    // Nothing of any of it reached the checker or the disk.
    assert!(
        !checks.exists(),
        "{}",
        std::fs::read_to_string(&checks).unwrap_or_default()
    );
    assert_eq!(s.get(&format!("/instances/{ID}")).await.status, 404);
    assert!(!inst.exists() && !run.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exploit_is_refused_and_the_previous_configuration_keeps_serving() {
    let s = setup("");
    // A secret beside the agent, readable by root only, as a controller's CA key is.
    let secret_dir = shared_dir();
    let secret = secret_dir.path().join("ca.key");
    std::fs::write(&secret, "-----BEGIN SECRET-----\nsecret-material\n").unwrap();
    let port = free_port();
    let good = format!(
        "{}frontend fe\n  bind {{MYIP}}:{port}\n  http-request return status 200 content-type text/plain string \"serving\"\n",
        defaults()
    );
    let r = s
        .put(&format!("/instances/{ID}/haproxy"), good.as_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(http_get(port).unwrap().contains("serving"));

    let exploit = format!(
        "{}frontend fe\n  bind {{MYIP}}:{port}\n  http-request return status 200 content-type text/plain file {}\n",
        defaults(),
        secret.display()
    );
    let r = s
        .put(&format!("/instances/{ID}/haproxy"), exploit.as_bytes())
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["code"], "forbidden_directive");
    assert!(r.body.contains("line 8: http-request file:"), "{}", r.body);
    assert!(!r.body.contains("secret-material"));
    // Nothing changed: the stored configuration and what haproxy serves.
    assert_eq!(s.get(&format!("/instances/{ID}/haproxy")).await.body, good);
    let served = http_get(port).unwrap();
    assert!(served.contains("serving") && !served.contains("secret-material"));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_of_the_instance_itself_are_served_by_daemons_with_their_own_user() {
    let s = setup("");
    let port = free_port();
    let r = s
        .put(&format!("/instances/{ID}/custom503"), CUSTOM_503.as_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pki = s.put_www_certificate().await;
    let tls_port = free_port();
    let config = format!(
        "{}  errorfile 503 {{CUSTOM503}}\nfrontend fe\n  bind {{MYIP}}:{port}\n  http-request return status 200 content-type text/plain file {{CUSTOM503}}\nfrontend tls\n  bind {{MYIP}}:{tls_port} ssl crt {{CERTS}}/www.example.com.pem\n  default_backend down\nbackend down\n  server s 127.0.0.2:1\n",
        defaults()
    );
    let r = s
        .put(&format!("/instances/{ID}/haproxy"), config.as_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(http_get(port).unwrap().contains("sorry, down"));
    let (cn, _) = https_get(&pki.ca_cert(), tls_port, "www.example.com")
        .await
        .expect("TLS frontend");
    assert_eq!(cn, "www.example.com");

    // The daemons run as the instance's own user and group, not root, without groups.
    let ids = haproxy_ids();
    assert!(!ids.is_empty(), "no haproxy of the instance found");
    for (uid, gid) in &ids {
        assert!(
            *uid >= 0x7000_0000 && uid == gid,
            "haproxy runs as {uid}:{gid}"
        );
    }
    // Its certificate is its own (0600), the instance directory closed to others.
    use std::os::unix::fs::MetadataExt;
    let cert = s
        .agent
        .state_dir()
        .join(format!("instances/{ID}/certificates/www.example.com.pem"));
    let meta = std::fs::metadata(&cert).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (ids[0].0, 0o600));
    let dir = std::fs::metadata(s.agent.state_dir().join("instances").join(ID)).unwrap();
    assert_eq!((dir.uid(), dir.gid(), dir.mode() & 0o007), (0, ids[0].1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_directive_runs_but_its_daemon_cannot_read_the_agent_key() {
    let tools = shared_dir();
    let probe = tools.path().join("probe.lua");
    // The probe reports the daemon's uid and whether it can open the agent's key and its
    // own certificate.
    let s = setup("[instances.policy]\nallow_directives = [\"lua-load\"]\n");
    let key = s.server.key.clone();
    let own = s
        .agent
        .state_dir()
        .join(format!("instances/{ID}/certificates/www.example.com.pem"));
    std::fs::write(
        &probe,
        format!(
            r#"
local function can_read(path)
  local f = io.open(path, "r")
  if f then f:close() return "readable" end
  return "denied"
end
local function uid()
  for line in io.lines("/proc/self/status") do
    local u = line:match("^Uid:%s+(%d+)")
    if u then return u end
  end
end
core.register_service("probe", "http", function(applet)
  local body = "uid=" .. uid() .. " key=" .. can_read("{key}") .. " own=" .. can_read("{own}") .. "\n"
  applet:set_status(200)
  applet:add_header("content-length", string.len(body))
  applet:start_response()
  applet:send(body)
end)
"#,
            key = key.display(),
            own = own.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The agent's key is readable by the agent (root) and the test: a real read check.
    assert!(std::fs::read(&key).is_ok());

    s.put_www_certificate().await;
    let port = free_port();
    let config = format!(
        "global\n  lua-load {}\n{}frontend fe\n  bind {{MYIP}}:{port}\n  http-request use-service lua.probe\n",
        probe.display(),
        defaults()
    );
    let r = s
        .put(&format!("/instances/{ID}/haproxy"), config.as_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut answer = String::new();
    for _ in 0..50 {
        answer = http_get(port).unwrap_or_default();
        if answer.contains("uid=") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = answer.lines().last().unwrap_or_default().to_string();
    let uid: u32 = body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uid="))
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no uid in {answer:?}"));
    assert!(uid >= 0x7000_0000, "{body}");
    assert!(body.contains("key=denied"), "{body}");
    assert!(body.contains("own=readable"), "{body}");

    // Not allowed: the same directive in another agent is refused.
    let strict = setup("");
    let r = strict
        .put(&format!("/instances/{ID}/haproxy"), config.as_bytes())
        .await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("line 2: lua-load:"), "{}", r.body);
}

#[test]
fn config_check_names_a_bad_allowance() {
    let pki = Pki::new();
    let server = pki.server("server", "agent-1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n[server]\nlisten = [\"127.0.0.1:1\"]\ncert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{ca}\"\n[instances.policy]\nallow_directives = [\"lua-lod\"]\nallow_paths = [\"relative/dir\"]\n",
            d = dir.path().display(),
            c = server.cert.display(),
            k = server.key.display(),
            ca = pki.ca_cert().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["config", "check", "--agent"])
        .arg(&config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("instances.policy.allow_directives") && text.contains("lua-lod"),
        "{text}"
    );
    assert!(
        text.contains("instances.policy.allow_paths") && text.contains("relative/dir"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_actor_named_by_the_controller_is_logged_and_from_anyone_else_ignored() {
    let pki = Pki::new();
    let server = pki.server("server", "agent-1");
    let agent = Agent::start(AgentOptions::new(&pki, &server));
    let controller = Client::new(
        &pki.ca_cert(),
        Some(&pki.client("controller", "applianced-controller")),
    );
    let other = Client::new(&pki.ca_cert(), Some(&pki.client("other", "someone-else")));
    for (client, actor, path) in [
        (&controller, "alice", "/instances/by-controller"),
        (&other, "mallory", "/instances/by-other"),
        (
            &controller,
            "bad actor\twith blanks",
            "/instances/bad-actor",
        ),
    ] {
        let mut conn = client.connect(agent.addr).await.unwrap();
        let r = conn
            .request("GET", path, b"", &[("x-applianced-actor", actor)])
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
    }
    agent.wait_log("/instances/bad-actor", Duration::from_secs(5));
    let log = agent.log_text();
    let line = |path: &str| {
        log.lines()
            .find(|l| {
                l.contains(&format!("path={path} ")) || l.contains(&format!("path=\"{path}\""))
            })
            .unwrap_or_else(|| panic!("no request line for {path}:\n{log}"))
            .to_string()
    };
    assert!(
        line("/instances/by-controller").contains("actor=alice"),
        "{log}"
    );
    let other_line = line("/instances/by-other");
    assert!(
        other_line.contains("actor=-") && !other_line.contains("mallory"),
        "{other_line}"
    );
    assert!(line("/instances/bad-actor").contains("actor=-"), "{log}");
}
