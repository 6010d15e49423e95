//! The controller's fleet, black-box, on SQLite and on PostgreSQL: the real controller
//! binary spawning real agents (each on its own loopback address, with the real haproxy),
//! operators driving them through the northbound API, appliances calling back with their
//! own certificates, a controller killed with SIGKILL in the middle of a create, and a
//! short time-to-live running out across that restart.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::controller::{Controller, http_get, served_by_config};
use common::*;
use serde_json::Value;

/// A webhook receiver: records every delivery; answers 500 to the first one (to prove
/// retries), 200 after.
struct Hooks {
    url: String,
    got: Arc<Mutex<Vec<(hyper::HeaderMap, String)>>>,
}

async fn hooks() -> Hooks {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<(hyper::HeaderMap, String)>>> = Arc::default();
    let record = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await?.to_bytes();
                            let n = {
                                let mut got = record.lock().unwrap();
                                got.push((headers, String::from_utf8_lossy(&body).into_owned()));
                                got.len()
                            };
                            let mut resp = hyper::Response::new(Full::new(bytes::Bytes::new()));
                            if n == 1 {
                                *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, hyper::Error>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Hooks { url, got }
}

fn hmac_hex(secret: &[u8], msg: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    applianced::certs::hex(aws_lc_rs::hmac::sign(&key, msg).as_ref())
}

async fn create(c: &Controller, token: &str, body: &str) -> (Value, String) {
    let r = c.call(token, "POST", "/v1/appliances", body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    let location = r.headers["location"].to_str().unwrap().to_string();
    let task = r.json();
    assert_eq!(
        location,
        format!("/v1/tasks/{}", task["id"].as_str().unwrap())
    );
    assert_eq!(task["kind"], "create");
    (task, location)
}

/// `POST /v1/appliances/ID/actions {"action": ACTION}`.
async fn act(c: &Controller, token: &str, id: &str, action: &str) -> Resp {
    let body = format!(r#"{{"action": "{action}"}}"#);
    c.call(
        token,
        "POST",
        &format!("/v1/appliances/{id}/actions"),
        &body,
    )
    .await
}

/// The same, answered 202 with a task: the 202's body and the finished task.
async fn act_done(c: &Controller, token: &str, id: &str, action: &str) -> (Value, Value) {
    let body = format!(r#"{{"action": "{action}"}}"#);
    c.run_task(
        token,
        "POST",
        &format!("/v1/appliances/{id}/actions"),
        &body,
    )
    .await
}

/// `POST /v1/appliances/ID/ping` with `query` (`""` or `"?async=true"`).
async fn ping_one(c: &Controller, token: &str, id: &str, query: &str) -> Resp {
    c.call(
        token,
        "POST",
        &format!("/v1/appliances/{id}/ping{query}"),
        "",
    )
    .await
}

/// The kinds of an appliance's events, oldest first.
fn event_kinds(events: &Value) -> Vec<&str> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

fn id_of(task: &Value) -> String {
    task["appliance_id"].as_str().unwrap().to_string()
}

async fn scenario(db_url: &str, net: u8) {
    let mut c = Controller::start(
        db_url,
        &format!("127.0.{net}.1"),
        "[appliances]\nttl_min_minutes = 1\nheartbeat_interval = \"1s\"\nmissed_heartbeats = 2\n\
         [tasks]\nagent_timeout = \"2s\"\nagent_attempts = 2\n",
    );
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    let hooks = hooks().await;
    let ttl_started = Instant::now();

    // A short-lived appliance first: its minute runs out while the rest is tested,
    // across a controller restart.
    let (short_task, short_loc) = create(
        &c,
        &root,
        &format!(
            r#"{{"name": "short", "ttl_minutes": 1, "callback_url": "{}"}}"#,
            hooks.url
        ),
    )
    .await;
    let short = id_of(&short_task);

    // Three appliances reach `active` through their own `launched` callbacks.
    let mut ids = Vec::new();
    for i in 1..=3 {
        let body =
            format!(r#"{{"name": "lb-{i}", "ttl_minutes": 60, "external_id": "order-{net}-{i}"}}"#);
        let (task, location) = create(&c, &root, &body).await;
        let done = c.wait_task(&root, &location, Duration::from_secs(30)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        ids.push(id_of(&task));
        // The same request again is the same task (idempotency key)...
        let r = c.call(&root, "POST", "/v1/appliances", &body).await;
        assert_eq!(
            (r.status, r.json()["id"].clone()),
            (202, task["id"].clone())
        );
    }
    // ...another request with a used key is a conflict.
    let r = c
        .call(
            &root,
            "POST",
            "/v1/appliances",
            &format!(r#"{{"name": "other", "external_id": "order-{net}-1"}}"#),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["type"], "urn:applianced:problem:conflict");
    for id in &ids {
        let a = c
            .wait_state(&root, id, "active", Duration::from_secs(30))
            .await;
        assert!(
            a["address"]
                .as_str()
                .unwrap()
                .starts_with(&format!("127.0.{net}."))
        );
        assert!(a["launched_at"].is_string() && a["expires_at"].is_string());
        assert!(a["certificate"]["serial"].is_string());
        let events = c.events(&root, id).await;
        let kinds = event_kinds(&events);
        assert_eq!(kinds, ["requested", "provisioning", "spawned", "launched"]);
        assert_eq!(c.agents_of(id).len(), 1);
    }
    // Heartbeats carry the agent's status snapshot.
    let a = c
        .wait_state(&root, &ids[0], "active", Duration::from_secs(5))
        .await;
    assert_eq!(a["last_status"]["topology"], "SINGLE");
    let list = c
        .call(&root, "GET", "/v1/appliances?state=active", "")
        .await
        .json();
    assert!(list.as_array().unwrap().len() >= 3);

    // Ping all three, synchronously and as a task.
    let targets = serde_json::json!({"targets": ids}).to_string();
    let r = c.call(&root, "POST", "/v1/ping", &targets).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json();
    assert_eq!(
        (p["targets"].as_u64(), p["reachable"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(p["results"][1]["agent"]["appliance_id"], ids[1].as_str());
    // A status poll brings each agent's /status back (and keeps it as the last status).
    let polled = serde_json::json!({"targets": ids, "check": "status"}).to_string();
    let p = c.call(&root, "POST", "/v1/ping", &polled).await.json();
    assert_eq!(p["reachable"], 3, "{p}");
    assert_eq!(p["results"][0]["agent"]["topology"], "SINGLE");
    assert!(p["results"][0]["agent"]["sampled_at"].is_string());
    let r = c.call(&root, "POST", "/v1/ping?async=true", &targets).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    let location = r.headers["location"].to_str().unwrap().to_string();
    let done = c.wait_task(&root, &location, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["reachable"], 3);
    let r = ping_one(&c, &root, &ids[2], "").await;
    assert_eq!(
        (r.status, r.json()["reachable"].clone()),
        (200, Value::Bool(true))
    );

    // A haproxy configuration pushed through the pass-through serves on that appliance.
    let port = free_port();
    let address = a["address"].as_str().unwrap().to_string();
    let instance = "3b2b4c5e-1b1a-4c2e-9a6f-1f2e3d4c5b6a";
    let r = c
        .call(
            &root,
            "PUT",
            &format!(
                "/v1/appliances/{}/agent/instances/{instance}/haproxy",
                ids[0]
            ),
            &served_by_config(port),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.headers["x-applianced-appliance"], ids[0].as_str());
    let served = http_get(&format!("{address}:{port}")).await.unwrap();
    assert!(served.contains(&format!("served by {address}")), "{served}");
    let r = c
        .call(
            &root,
            "GET",
            &format!("/v1/appliances/{}/agent/listeners", ids[0]),
            "",
        )
        .await;
    assert_eq!(r.json()[0]["haproxy"], "running", "{}", r.body);

    // Refusals.
    let r = c.call(&root, "GET", "/v1/appliances/no-such-id", "").await;
    assert_eq!(
        (r.status, r.json()["type"].as_str()),
        (404, Some("urn:applianced:problem:not-found"))
    );
    let r = act(&c, &root, &ids[1], "start").await;
    assert_eq!(r.status, 409, "start while active: {}", r.body);
    let r = act(&c, &root, &ids[1], "explode").await;
    assert_eq!(r.status, 422, "{}", r.body);
    for bad in [
        r#"{"name": "x", "ttl_minutes": 500}"#,
        r#"{"name": "no spaces"}"#,
        r#"{"name": "x", "template": "vm"}"#,
        r#"{"name": "x", "callback_url": "ftp://x"}"#,
    ] {
        let r = c.call(&root, "POST", "/v1/appliances", bad).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    let r = c.call(&root, "POST", "/v1/appliances", "{").await;
    assert_eq!(r.status, 400);
    // A member sees neither the admin's appliances nor its tasks.
    let r = c
        .call(&root, "POST", "/v1/users", r#"{"name": "member"}"#)
        .await;
    let member = c
        .token("member", r.json()["password"].as_str().unwrap())
        .await;
    assert_eq!(
        c.call(&member, "GET", &format!("/v1/appliances/{}", ids[0]), "")
            .await
            .status,
        404
    );
    assert_eq!(c.call(&member, "GET", &location, "").await.status, 404);
    let r = c.call(&member, "POST", "/v1/ping", &targets).await;
    assert_eq!(
        r.status, 422,
        "pinging appliances one cannot see: {}",
        r.body
    );
    let r = c
        .call(&root, "POST", "/v1/ping", r#"{"targets": ["no-such-id"]}"#)
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        c.call(&member, "GET", "/v1/appliances", "").await.json(),
        serde_json::json!([])
    );
    // Strict input: a JSON array is not the object it resembles, and nothing is created.
    let r = c
        .call(&root, "POST", "/v1/appliances", r#"["x", 30]"#)
        .await;
    assert_eq!(
        (r.status, r.json()["type"].as_str()),
        (400, Some("urn:applianced:problem:invalid-input")),
        "{}",
        r.body
    );
    for bad in ["", "null", "[]", r#""x""#] {
        let r = c.call(&root, "POST", "/v1/appliances", bad).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        let r = c.call(&root, "POST", "/v1/ping", bad).await;
        assert_eq!(
            r.status,
            if bad.is_empty() { 200 } else { 400 },
            "{bad:?}: {}",
            r.body
        );
    }
    let r = c
        .call(&root, "POST", "/v1/ping", r#"{"targets": [], "x": 1}"#)
        .await;
    assert_eq!(r.status, 400, "unknown field: {}", r.body);
    assert!(
        !c.call(&root, "GET", "/v1/appliances?name=x", "")
            .await
            .body
            .contains("\"x\""),
        "an array body created an appliance"
    );
    // `?async=` with no value is not a yes.
    for query in ["?async=", "?async=maybe"] {
        let r = c
            .call(&root, "POST", &format!("/v1/ping{query}"), &targets)
            .await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        let r = ping_one(&c, &root, &ids[0], query).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
    }
    let r = ping_one(&c, &root, &ids[0], "?async=false").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The pass-through is read-only for members: they read their appliance's agent, only
    // admins write to it. Every change names its actor.
    let (task, location) = create(&c, &member, r#"{"name": "members-lb"}"#).await;
    let done = c
        .wait_task(&member, &location, Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let mine = id_of(&task);
    c.wait_state(&member, &mine, "active", Duration::from_secs(30))
        .await;
    let agent_path = format!("/v1/appliances/{mine}/agent/instances/{instance}/haproxy");
    for method in ["PUT", "POST", "DELETE"] {
        let r = c
            .call(&member, method, &agent_path, &served_by_config(free_port()))
            .await;
        assert_eq!(
            (r.status, r.json()["type"].as_str()),
            (403, Some("urn:applianced:problem:pass-through-read-only")),
            "{method}: {}",
            r.body
        );
    }
    let r = c
        .call(
            &member,
            "GET",
            &format!("/v1/appliances/{mine}/agent/listeners"),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "members read: {}", r.body);
    assert_eq!(r.json(), serde_json::json!([]), "nothing was written");
    let r = c
        .call(
            &member,
            "PUT",
            &format!(
                "/v1/appliances/{}/agent/instances/{instance}/haproxy",
                ids[0]
            ),
            "x",
        )
        .await;
    assert_eq!(
        r.status, 404,
        "another's appliance stays invisible: {}",
        r.body
    );
    let r = c
        .call(&root, "PUT", &agent_path, &served_by_config(free_port()))
        .await;
    assert_eq!(r.status, 201, "admins write: {}", r.body);
    tenants_stay_on_their_appliance(&c, &root, &mine, &agent_path).await;
    let (_, done) = act_done(&c, &root, &mine, "stop").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let events = c.events(&member, &mine).await;
    let actors: Vec<(&str, Option<&str>)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["actor"].as_str()))
        .collect();
    for (event, actor) in &actors {
        match *event {
            "requested" | "provisioning" | "spawned" => {
                assert_eq!(*actor, Some("member"), "{event}: {events}")
            }
            "stop" => assert_eq!(*actor, Some("root"), "{events}"),
            // Reported by the appliance itself.
            "launched" => assert_eq!(*actor, None, "{events}"),
            // By the appliance, or by the backend within root's stop task.
            "stopped" => assert!(matches!(*actor, None | Some("root")), "{events}"),
            _ => {}
        }
    }
    for needed in ["requested", "spawned", "launched", "stop"] {
        assert!(
            actors.iter().any(|(e, _)| *e == needed),
            "{needed}: {events}"
        );
    }
    let log = c.log_text();
    let line = |actor: &str, method: &str, path: &str| {
        log.lines().any(|l| {
            l.contains(" request ")
                && l.contains(&format!("actor={actor} "))
                && l.contains(&format!("method={method} "))
                && l.contains(&format!("path={path} "))
        })
    };
    assert!(line("member", "POST", "/v1/appliances"), "{log}");
    assert!(line("member", "PUT", &agent_path), "{log}");
    assert!(line("root", "PUT", &agent_path), "{log}");
    // An appliance cannot report for another, and callbacks need a certificate.
    let creds0 = c.appliance_creds(&ids[0]);
    let as_first = Client::new(&c.ca_cert(), Some(&creds0));
    let r = as_first
        .request(
            c.appliance_zone,
            "POST",
            "/v1/events",
            format!(r#"{{"event": "stopped", "appliance_id": "{}"}}"#, ids[1]).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let r = as_first
        .request(
            c.appliance_zone,
            "POST",
            "/v1/events",
            br#"{"event": "launched"}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        r.status, 200,
        "its own launched again is welcome: {}",
        r.body
    );
    assert_eq!(r.json()["state"], "active");
    // Without a certificate, an appliance listener takes requests to join only.
    let r = c
        .client()
        .request(
            c.appliance_zone,
            "POST",
            "/v1/events",
            br#"{"event": "launched"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);

    // Watchdog: an agent that stops answering becomes unhealthy, and recovers.
    let frozen = c.agents_of(&ids[1]);
    signal_all(&frozen, nix::sys::signal::Signal::SIGSTOP);
    // A ping of it fails after bounded retries with a 502 problem; the controller is fine.
    let r = ping_one(&c, &root, &ids[1], "?async=true").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let loc = r.headers["location"].to_str().unwrap().to_string();
    let done = c.wait_task(&root, &loc, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["problem"]["status"], 502, "{done}");
    assert_eq!(
        done["problem"]["type"],
        "urn:applianced:problem:bad-gateway"
    );
    c.wait_state(&root, &ids[1], "unhealthy", Duration::from_secs(15))
        .await;
    let r = c.call(&root, "POST", "/v1/ping", &targets).await;
    assert_eq!(r.json()["reachable"], 2, "{}", r.body);
    signal_all(&frozen, nix::sys::signal::Signal::SIGCONT);
    c.wait_state(&root, &ids[1], "active", Duration::from_secs(15))
        .await;

    // Suspended on purpose: no heartbeats, and no watchdog either; resumed, active again.
    let (_, done) = act_done(&c, &root, &ids[1], "suspend").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.wait_state(&root, &ids[1], "suspended", Duration::from_secs(1))
        .await;
    let (_, done) = act_done(&c, &root, &ids[1], "resume").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    c.wait_state(&root, &ids[1], "active", Duration::from_secs(5))
        .await;

    // Stop and start again: the agent reports `stopped`, then `launched`.
    let (accepted, done) = act_done(&c, &root, &ids[1], "stop").await;
    // Moved at once; the worker may already have finished when the answer is written.
    let state = accepted["appliance"]["state"].clone();
    assert!(state == "stopping" || state == "stopped", "{state}");
    assert_eq!(done["state"], "succeeded", "{done}");
    c.wait_state(&root, &ids[1], "stopped", Duration::from_secs(5))
        .await;
    assert!(c.agents_of(&ids[1]).is_empty());
    let r = ping_one(&c, &root, &ids[1], "").await;
    assert_eq!(r.status, 409, "nothing to ping: {}", r.body);
    let r = act(&c, &root, &ids[1], "start").await;
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait_state(&root, &ids[1], "active", Duration::from_secs(30))
        .await;

    // Extend: more minutes, capped at the maximum time-to-live since `launched`.
    let extend = |m: u32| format!(r#"{{"action": "extend", "minutes": {m}}}"#);
    let path = format!("/v1/appliances/{}/actions", ids[0]);
    let before = c
        .call(&root, "GET", &format!("/v1/appliances/{}", ids[0]), "")
        .await
        .json();
    let r = c.call(&root, "POST", &path, &extend(30)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let parse = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert_eq!(
        parse(&r.json()["expires_at"]) - parse(&before["expires_at"]),
        time::Duration::minutes(30)
    );
    let r = c.call(&root, "POST", &path, &extend(1000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        parse(&r.json()["expires_at"]) - parse(&before["launched_at"]),
        time::Duration::minutes(235),
        "capped at ttl_max_minutes"
    );
    let r = c.call(&root, "POST", &path, &extend(1)).await;
    assert_eq!(r.status, 409, "already at the cap: {}", r.body);
    let r = c
        .call(&root, "POST", &path, r#"{"action": "extend"}"#)
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // Certificate rotation through the agent's PUT /certificate.
    let before = c
        .call(&root, "GET", &format!("/v1/appliances/{}", ids[2]), "")
        .await
        .json()["certificate"]["serial"]
        .clone();
    let (_, done) = act_done(&c, &root, &ids[2], "rotate-certificate").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let after = done["result"]["certificate"]["serial"].clone();
    assert_ne!(before, after);
    let agent_addr: std::net::SocketAddr = done["result"]["agent_url"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    // The agent lets only the controller in, but the client side of a TLS 1.3 handshake
    // completes before the refusal arrives, and shows the new certificate.
    let tls = Client::new(&c.ca_cert(), Some(&creds0))
        .tls(agent_addr)
        .await
        .expect("client side of the handshake");
    let serial = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| applianced::certs::CertInfo::parse(&c[0]).unwrap().serial);
    assert_eq!(serial.as_deref(), after.as_str());

    // Killed in the middle of a create: after a restart the task completes, exactly
    // one agent runs for it, and the other appliances kept serving throughout.
    let (task, location) =
        create(&c, &root, r#"{"name": "during-crash", "ttl_minutes": 30}"#).await;
    c.kill9();
    let served = http_get(&format!("{address}:{port}")).await.unwrap();
    assert!(
        served.contains("served by"),
        "haproxy serves without a controller"
    );
    c.restart();
    let done = c.wait_task(&root, &location, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}\n{}", c.log_text());
    let crashed = id_of(&task);
    c.wait_state(&root, &crashed, "active", Duration::from_secs(30))
        .await;
    assert_eq!(c.agents_of(&crashed).len(), 1, "nothing ran twice");
    for id in &ids {
        assert_eq!(c.agents_of(id).len(), 1);
    }
    // SIGHUP reloads the TLS material (the packaged unit's ExecReload) and nothing else.
    c.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log_text().contains("SIGHUP: TLS material reloaded") {
        assert!(Instant::now() < deadline, "{}", c.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.call(&root, "GET", "/v1/appliances", "").await.status, 200);

    // Deleted: its certificate is revoked and refused in the handshake.
    let victim = ids[2].clone();
    let victim_creds = {
        let creds = c.appliance_creds(&victim);
        let keep = c.dir.path().join("victim");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&creds.cert, keep.join("c.crt")).unwrap();
        std::fs::copy(&creds.key, keep.join("c.key")).unwrap();
        Creds {
            cert: keep.join("c.crt"),
            key: keep.join("c.key"),
        }
    };
    let (_, done) = c
        .run_task(&root, "DELETE", &format!("/v1/appliances/{victim}"), "")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    c.wait_state(&root, &victim, "deleted", Duration::from_secs(5))
        .await;
    assert!(c.agents_of(&victim).is_empty());
    assert_refused(
        &Client::new(&c.ca_cert(), Some(&victim_creds)),
        c.appliance_zone,
        rustls::AlertDescription::CertificateRevoked,
    )
    .await;
    let r = c
        .call(&root, "DELETE", &format!("/v1/appliances/{victim}"), "")
        .await;
    assert_eq!(r.status, 409, "deleting twice: {}", r.body);
    let listed = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    };
    let live = listed(c.call(&root, "GET", "/v1/appliances", "").await.json());
    assert!(
        !live.contains(&victim) && live.contains(&ids[0]),
        "{live:?}"
    );
    let gone = listed(
        c.call(&root, "GET", "/v1/appliances?state=deleted", "")
            .await
            .json(),
    );
    assert_eq!(gone, std::slice::from_ref(&victim));

    // The short time-to-live ran on across the restart: warned, expired, stopped.
    let remaining = Duration::from_secs(100).saturating_sub(ttl_started.elapsed());
    let a = c.wait_state(&root, &short, "stopped", remaining).await;
    assert_eq!(
        c.wait_task(&root, &short_loc, Duration::from_secs(1)).await["state"],
        "succeeded"
    );
    assert!(c.agents_of(&short).is_empty());
    let events = c.events(&root, &short).await;
    let kinds = event_kinds(&events);
    for k in ["requested", "launched", "expiring", "expired", "stopped"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?} ({a})");
    }
    // Every event was delivered as a signed webhook; the first after a retry.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = c.events(&root, &short).await;
        let all_delivered = events.as_array().unwrap().iter().all(|e| {
            e["deliveries"].as_array().unwrap().len() == 1
                && e["deliveries"][0]["state"] == "delivered"
        });
        if all_delivered {
            // The receiver refused the first request it got; that one was retried.
            let attempts: Vec<u64> = events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["deliveries"][0]["attempts"].as_u64().unwrap())
                .collect();
            assert_eq!(
                attempts.iter().filter(|a| **a == 2).count(),
                1,
                "{attempts:?}"
            );
            assert!(attempts.iter().all(|a| *a <= 2), "{attempts:?}");
            break;
        }
        assert!(Instant::now() < deadline, "undelivered: {events}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secret = std::fs::read_to_string(c.state_dir().join("webhook.secret")).unwrap();
    let got = hooks.got.lock().unwrap().clone();
    assert!(
        got.len() > kinds.len(),
        "{} deliveries for {} events",
        got.len(),
        kinds.len()
    );
    for (headers, body) in &got {
        let ts = headers["x-applianced-timestamp"].to_str().unwrap();
        let expected = format!(
            "sha256={}",
            hmac_hex(secret.trim().as_bytes(), format!("{ts}.{body}").as_bytes())
        );
        assert_eq!(headers["x-applianced-signature"], expected.as_str());
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["appliance_id"], short.as_str());
        assert_eq!(
            headers["x-applianced-event"],
            event["event"].as_str().unwrap()
        );
    }

    // Deleting the appliance that runs an instance stops its haproxy too.
    let (_, done) = c
        .run_task(&root, "DELETE", &format!("/v1/appliances/{}", ids[0]), "")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(c.agents_of(&ids[0]).is_empty());
    assert!(
        http_get(&format!("{address}:{port}")).await.is_err(),
        "haproxy of a deleted appliance still serves"
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(
        &format!("sqlite://{}/controller.db", dir.path().display()),
        41,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_on_postgres() {
    let pg = postgres::Postgres::start();
    scenario(&pg.url, 42).await;
}

/// An appliance that never calls back: `launch_timeout` after the configured time, then
/// destroyed like any other. With one slot only, a second appliance finds no capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appliance_that_never_launches_times_out() {
    let dir = tempfile::tempdir().unwrap();
    // Callbacks go to a port where nothing listens.
    let mut c = Controller::start_with(
        &format!("sqlite://{}/controller.db", dir.path().display()),
        "127.0.43.1",
        "[appliances]\nlaunch_timeout = \"2s\"\n\
         [webhooks]\nallowed_hosts = [\"127.0.0.1\", \"hooks.example\", \"*.corp.example\"]\n",
        &format!(
            "controller_url = \"https://127.0.0.1:{}\"\nmax_appliances = 1",
            free_port()
        ),
    );
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    // Callbacks only to the hosts the operator allowed.
    for url in ["http://127.0.0.2:1/hook", "https://corp.example/hook"] {
        let r = c
            .call(
                &root,
                "POST",
                "/v1/appliances",
                &serde_json::json!({"name": "hooked", "callback_url": url}).to_string(),
            )
            .await;
        assert_eq!(r.status, 422, "{url}: {}", r.body);
        assert!(r.body.contains("allowed_hosts"), "{}", r.body);
    }
    // Webhooks for this one are refused (nothing listens) and retried.
    let (task, location) = create(
        &c,
        &root,
        &format!(
            r#"{{"name": "silent", "callback_url": "http://127.0.0.1:{}/hook"}}"#,
            free_port()
        ),
    )
    .await;
    assert_eq!(
        c.wait_task(&root, &location, Duration::from_secs(30)).await["state"],
        "succeeded"
    );
    let id = id_of(&task);
    let a = c
        .wait_state(&root, &id, "launch_timeout", Duration::from_secs(15))
        .await;
    assert!(
        a["launched_at"].is_null() && a["expires_at"].is_null(),
        "{a}"
    );
    assert_eq!(
        c.agents_of(&id).len(),
        1,
        "the agent runs, but never reached us"
    );
    // The operator drops that host: its pending deliveries fail without being sent.
    let config = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(&c.config, config.replace("\"127.0.0.1\", ", "")).unwrap();
    c.restart();
    // The next attempts are due within the backoff so far (a few seconds).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let events = c.events(&root, &id).await;
        let deliveries: Vec<&Value> = events
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["deliveries"].as_array().unwrap())
            .collect();
        assert!(!deliveries.is_empty(), "{events}");
        assert!(
            deliveries.iter().all(|d| d["state"] != "delivered"),
            "{events}"
        );
        if deliveries.iter().all(|d| {
            d["state"] == "failed"
                && d["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("allowed_hosts"))
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {events}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // No room left (one slot, taken): refused at once, nothing made.
    let r = c
        .call(
            &root,
            "POST",
            "/v1/appliances",
            r#"{"name": "one-too-many"}"#,
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["type"], "urn:applianced:problem:no-capacity");
    let r = c
        .call(&root, "GET", "/v1/appliances?name=one-too-many", "")
        .await;
    assert_eq!(r.json(), serde_json::json!([]));
    let (_, done) = c
        .run_task(&root, "DELETE", &format!("/v1/appliances/{id}"), "")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(c.agents_of(&id).is_empty());
}

/// Two controllers on one PostgreSQL database share the work: tasks are claimed with
/// row locks, so each create runs exactly once whichever controller takes it, and either
/// controller serves every appliance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_share_the_work_on_postgres() {
    let pg = postgres::Postgres::start();
    let a = Controller::start(&pg.url, "127.0.44.1", "[tasks]\nworkers = 2\n");
    let b = a.start_peer();
    let password = a.add_user("root", true);
    let token = a.token("root", &password).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        // Half of the requests through each controller.
        let via = if i % 2 == 0 { &a } else { &b };
        let (task, _) = create(via, &token, &format!(r#"{{"name": "shared-{i}"}}"#)).await;
        ids.push(id_of(&task));
    }
    for (i, id) in ids.iter().enumerate() {
        // Through the other controller: same store, same answers.
        let other = if i % 2 == 0 { &b } else { &a };
        other
            .wait_state(&token, id, "active", Duration::from_secs(60))
            .await;
        assert_eq!(a.agents_of(id).len(), 1, "one agent for {id}");
        let events = other.events(&token, id).await;
        let spawned = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "spawned")
            .count();
        assert_eq!(spawned, 1, "{events}");
    }
    let finished = |c: &Controller| c.log_text().matches("task finished").count();
    assert_eq!(finished(&a) + finished(&b), 8, "every task ran once");
    let p = b.call(&token, "POST", "/v1/ping", "").await.json();
    assert_eq!(p["reachable"], 8, "{p}");
}

/// Sends `sig` to each of `pids`.
fn signal_all(pids: &[i32], sig: nix::sys::signal::Signal) {
    for pid in pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), sig).unwrap();
    }
}

/// The exploit of a configuration that serves the controller's CA key: refused by the
/// agent's directive policy even for an admin, the key in no answer; the appliance runs
/// as its own user, which cannot open that key; the agent logs who acted.
async fn tenants_stay_on_their_appliance(c: &Controller, root: &str, id: &str, agent_path: &str) {
    let ca_key = c.state_dir().join("ca/ca.key");
    let key = std::fs::read_to_string(&ca_key).unwrap();
    let secret_line = key.lines().nth(1).unwrap().to_string();
    let exploit = format!(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\nfrontend fe\n  bind {{MYIP}}:{}\n  http-request return status 200 content-type text/plain file {}\n",
        free_port(),
        ca_key.display()
    );
    let r = c.call(root, "PUT", agent_path, &exploit).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body.contains("forbidden_directive") || r.body.contains("Forbidden directive"),
        "{}",
        r.body
    );
    assert!(r.body.contains("line 8"), "{}", r.body);
    assert!(!r.body.contains(&secret_line), "the key leaked: {}", r.body);

    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: appliances run as the controller's user; uid checks skipped");
        return;
    }
    let pids = c.agents_of(id);
    assert!(!pids.is_empty(), "no agent for {id}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert!(uid >= 0x7100_0000, "the agent of {id} runs as {uid}");
    let denied = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .arg("cat")
        .arg(&ca_key)
        .output()
        .unwrap();
    assert!(!denied.status.success(), "uid {uid} read the CA key");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // Its own key it can read.
    let own = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .arg("cat")
        .arg(c.state_dir().join(format!("appliances/{id}/tls/agent.key")))
        .output()
        .unwrap();
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    // The agent's request line names the admin who wrote through the pass-through.
    let log =
        std::fs::read_to_string(c.state_dir().join(format!("appliances/{id}/agent.log"))).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("actor=root") && l.contains("method=PUT")),
        "{log}"
    );
}
