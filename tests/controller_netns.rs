//! The `netns` backend, black-box, as root: each appliance in its own network namespace
//! on a bridge the controller makes, its agent on port 443 of its own address. A
//! configuration pushed through the pass-through serves on that address, reachable from
//! the host; appliances cannot reach each other nor the host beyond the controller's
//! appliance listener; a controller restart adopts them; destroying one leaves no
//! namespace, link, address or process behind.
//!
//! The bridge and its subnet are private to the test (no uplink; removed at the end).
//! Without `CAP_NET_ADMIN` the test says it is skipped and why.

mod common;

use std::process::Command;
use std::time::Duration;

use common::controller::{Controller, http_get, served_by_config};
use common::free_port;

/// Whether this process may make network namespaces and bridges; why not otherwise.
/// Only a lack of privilege is a reason to skip: any other failure fails the test.
fn net_admin() -> Result<(), String> {
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let probe = format!("aplprobe{}-{n}", std::process::id());
    let out = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .expect("ip (iproute2) runs");
    if out.status.success() {
        let _ = Command::new("ip").args(["netns", "del", &probe]).output();
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        why.contains("Operation not permitted") || why.contains("Permission denied"),
        "cannot make a network namespace, and not for lack of privilege: {why}"
    );
    Err(why)
}

/// Removes what the test's controller made on the host, whatever happened.
struct Cleanup {
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for entry in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{}-", self.bridge)) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let table = format!("applianced-{}", self.bridge);
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .output();
    }
}

/// `curl` from inside a namespace: its exit code (0: a TLS or HTTP answer came; 7:
/// refused; 28: no answer in time).
fn curl_from(ns: &str, url: &str) -> i32 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sk", "-o", "/dev/null"])
        .args(["--connect-timeout", "2", "--max-time", "4", url])
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

/// Whether a TCP connection from inside `ns` to `addr` is established (the answer may
/// then be a TLS refusal, which does not matter here).
fn connects_from(ns: &str, addr: &str) -> bool {
    let code = curl_from(ns, &format!("https://{addr}/"));
    !matches!(code, 7 | 28)
}

async fn create(c: &Controller, token: &str, name: &str) -> String {
    let r = c
        .call(
            token,
            "POST",
            "/v1/appliances",
            &format!(r#"{{"name": "{name}"}}"#),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["appliance_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliances_in_their_own_namespaces() {
    if let Err(why) = net_admin() {
        eprintln!(
            "SKIPPED appliances_in_their_own_namespaces: this machine does not let the test \
             make network namespaces (CAP_NET_ADMIN): {why}"
        );
        return;
    }
    let n = std::process::id() % 200 + 20;
    let bridge = format!("aplt{n}");
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
    };
    let subnet = format!("10.213.{n}.0/28");
    let gateway = format!("10.213.{n}.1");
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/c.db", dir.path().display());
    let mut c = Controller::start_on(
        &db,
        &gateway,
        &format!(
            "kind = \"netns\"\nbridge = \"{bridge}\"\nsubnet = \"{subnet}\"\nmax_appliances = 4\n"
        ),
        "[appliances]\nheartbeat_interval = \"1s\"\n",
    );
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;

    let r = c.call(&root, "GET", "/v1/networks", "").await;
    assert_eq!(r.json()[0]["id"], bridge.as_str(), "{}", r.body);
    let first = create(&c, &root, "ns-a").await;
    let second = create(&c, &root, "ns-b").await;
    let a = c
        .wait_state(&root, &first, "active", Duration::from_secs(30))
        .await;
    let b = c
        .wait_state(&root, &second, "active", Duration::from_secs(30))
        .await;
    let (addr_a, addr_b) = (
        a["address"].as_str().unwrap().to_string(),
        b["address"].as_str().unwrap().to_string(),
    );
    assert!(addr_a.starts_with(&format!("10.213.{n}.")), "{a}");
    assert_ne!(addr_a, addr_b);
    assert_eq!(a["agent_url"], format!("https://{addr_a}:443/"), "{a}");
    // Slot N has the subnet's address N + 2.
    let slot_of = |addr: &str| addr.rsplit('.').next().unwrap().parse::<u32>().unwrap() - 2;
    let ns_of = |addr: &str| format!("{bridge}-{}", slot_of(addr));
    let (ns_a, ns_b) = (ns_of(&addr_a), ns_of(&addr_b));
    assert!(std::path::Path::new("/run/netns").join(&ns_a).exists());

    // Through the pass-through, a configuration serves on the appliance's own address,
    // reachable from the host through the bridge.
    let port = free_port();
    let instance = "3b2b4c5e-1b1a-4c2e-9a6f-1f2e3d4c5b6a";
    let r = c
        .call(
            &root,
            "PUT",
            &format!("/v1/appliances/{first}/agent/instances/{instance}/haproxy"),
            &served_by_config(port),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let served = http_get(&format!("{addr_a}:{port}")).await.unwrap();
    assert!(served.contains(&format!("served by {addr_a}")), "{served}");

    // Isolation: an appliance reaches neither the other's agent nor its load balancer,
    // nor a host service on the bridge's address; it reaches its own and the
    // controller's appliance listener.
    assert!(
        connects_from(&ns_a, &format!("{addr_a}:443")),
        "its own agent"
    );
    assert!(
        connects_from(&ns_b, &c.appliance_zone.to_string()),
        "the controller's appliance listener"
    );
    assert!(
        !connects_from(&ns_b, &format!("{addr_a}:443")),
        "another appliance's agent"
    );
    assert!(
        !connects_from(&ns_b, &format!("{addr_a}:{port}")),
        "another appliance's load balancer"
    );
    assert!(
        !connects_from(&ns_a, &format!("{addr_b}:443")),
        "the other way round"
    );
    let host_service = std::net::TcpListener::bind((gateway.as_str(), 0)).unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    assert!(
        !connects_from(&ns_a, &format!("{gateway}:{host_port}")),
        "a host service beyond the controller"
    );

    // A controller restart adopts them: same agents, still reachable.
    let r = c.call(&root, "POST", "/v1/ping", "").await;
    assert_eq!(r.json()["reachable"], 2, "{}", r.body);
    c.restart();
    let root = c.token("root", &password).await;
    let r = c.call(&root, "POST", "/v1/ping", "").await;
    assert_eq!(r.json()["reachable"], 2, "{}", r.body);
    assert_eq!(c.agents_of(&first).len(), 1);

    // Stop and start: the namespace stays, the agent comes back in it.
    let (_, done) = c
        .run_task(
            &root,
            "POST",
            &format!("/v1/appliances/{second}/actions"),
            r#"{"action": "stop"}"#,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, done) = c
        .run_task(
            &root,
            "POST",
            &format!("/v1/appliances/{second}/actions"),
            r#"{"action": "start"}"#,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    c.wait_state(&root, &second, "active", Duration::from_secs(30))
        .await;

    // Destroyed: nothing of it is left on the host.
    let slot_a = slot_of(&addr_a);
    let (_, done) = c
        .run_task(&root, "DELETE", &format!("/v1/appliances/{first}"), "")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(!std::path::Path::new("/run/netns").join(&ns_a).exists());
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(format!("{bridge}.{slot_a}"))
            .exists()
    );
    assert!(c.agents_of(&first).is_empty());
    assert!(
        common::processes_with(&format!("appliances/{first}")).is_empty(),
        "no process of it"
    );
    let addresses = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&addresses.stdout).contains(&format!("{addr_a}/")),
        "its address is gone"
    );
    // The other one still serves.
    let r = c
        .call(&root, "POST", &format!("/v1/appliances/{second}/ping"), "")
        .await;
    assert_eq!(r.json()["reachable"], true, "{}", r.body);
    drop(host_service);
}

/// Two backends at once: a `process` one and a `netns` one, each with its region; a
/// template names the namespaced region, a create may name a backend; what does not
/// fit together is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_and_a_netns_backend_side_by_side() {
    if let Err(why) = net_admin() {
        eprintln!(
            "SKIPPED a_process_and_a_netns_backend_side_by_side: this machine does not let \
             the test make network namespaces (CAP_NET_ADMIN): {why}"
        );
        return;
    }
    let n = (std::process::id() + 100) % 200 + 20;
    let bridge = format!("aplu{n}");
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
    };
    let gateway = format!("10.214.{n}.1");
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/c.db", dir.path().display());
    let c = Controller::start_on(
        &db,
        &gateway,
        "",
        &format!(
            "[[backends]]\nname = \"local\"\nkind = \"process\"\nfirst_address = \"127.0.59.1\"\n\
             max_appliances = 2\nagent_port = {port}\n\
             [[backends]]\nname = \"ns\"\nkind = \"netns\"\nbridge = \"{bridge}\"\n\
             subnet = \"10.214.{n}.0/28\"\nmax_appliances = 2\n\
             [[regions]]\nname = \"host\"\nbackend = \"local\"\ncapacity = 2\n\
             [[regions]]\nname = \"isolated\"\nbackend = \"ns\"\ncapacity = 2\n\
             [[templates]]\nname = \"isolated-lb\"\nflavor = \"default\"\nregion = \"isolated\"\n",
            port = free_port()
        ),
    );
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    let regions = c.call(&root, "GET", "/v1/regions", "").await.json();
    let pairs: Vec<(String, String)> = regions
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["backend"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("host".to_string(), "local".to_string()),
            ("isolated".to_string(), "ns".to_string())
        ]
    );
    let t = c
        .call(&root, "GET", "/v1/templates/isolated-lb", "")
        .await
        .json();
    assert_eq!(t["backend"], "ns", "{t}");

    for (body, why) in [
        (r#"{"name": "x", "backend": "nope"}"#, "not configured"),
        (
            r#"{"name": "x", "backend": "local", "region": "isolated"}"#,
            "not a region of backend",
        ),
        (
            r#"{"name": "x", "backend": "local", "template": "isolated-lb"}"#,
            "made by backend",
        ),
    ] {
        let r = c.call(&root, "POST", "/v1/appliances", body).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert!(r.body.contains(why), "{body}: {}", r.body);
    }
    let r = c
        .call(
            &root,
            "POST",
            "/v1/appliances",
            r#"{"name": "in-ns", "template": "isolated-lb"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let in_ns = r.json()["appliance_id"].as_str().unwrap().to_string();
    let r = c
        .call(
            &root,
            "POST",
            "/v1/appliances",
            r#"{"name": "on-host", "backend": "local"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let on_host = r.json()["appliance_id"].as_str().unwrap().to_string();
    let a = c
        .wait_state(&root, &in_ns, "active", Duration::from_secs(30))
        .await;
    let b = c
        .wait_state(&root, &on_host, "active", Duration::from_secs(30))
        .await;
    assert_eq!(
        (a["backend"].as_str(), a["region"].as_str()),
        (Some("ns"), Some("isolated"))
    );
    assert_eq!(
        (b["backend"].as_str(), b["region"].as_str()),
        (Some("local"), Some("host"))
    );
    assert!(
        a["address"]
            .as_str()
            .unwrap()
            .starts_with(&format!("10.214.{n}.")),
        "{a}"
    );
    assert_eq!(b["address"], "127.0.59.1", "{b}");
    // The namespace's interface has the address the controller recorded (the netns
    // backend's first slot, though the process backend's slots come before it).
    let shown = Command::new("ip")
        .args([
            "-n",
            &format!("{bridge}-0"),
            "-o",
            "-4",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        shown.contains(&format!("inet {}/28", a["address"].as_str().unwrap())),
        "{shown}"
    );
    let r = c.call(&root, "POST", "/v1/ping", "").await;
    assert_eq!(r.json()["reachable"], 2, "{}", r.body);
    for id in [&in_ns, &on_host] {
        let (_, done) = c
            .run_task(&root, "DELETE", &format!("/v1/appliances/{id}"), "")
            .await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{bridge}-"))
        })
        .collect();
    assert!(left.is_empty(), "no namespace left");
}
