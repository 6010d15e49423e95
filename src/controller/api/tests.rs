//! The API in process: requests through the router, without sockets, against a real
//! fleet on SQLite (no task worker runs, so nothing is spawned): every route, the
//! authentication and visibility rules, and the problem types.

use std::sync::Arc;

use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use super::router;
use crate::callback::{Callback, CallbackEvent};
use crate::config::controller::{ControllerConfig, Zone};
use crate::controller::fleet::Fleet;
use crate::controller::fleet::fakes::{FakeBackend, Script};
use crate::controller::fleet::ports::{AgentClient, Backend, CallError};
use crate::controller::store::{Role, Store};
use crate::controller::{auth, backend::ProcessBackend, ca::ControllerCa};

struct Harness {
    router: axum::Router,
    fleet: Arc<Fleet>,
    admin: String,
    member: String,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Harness {
    async fn new() -> Harness {
        Harness::build(None).await
    }

    /// A harness whose backend and agents are fakes the test controls.
    async fn with_fakes() -> (Harness, Arc<FakeBackend>, Arc<Script>) {
        let (backend, agents) = (
            Arc::new(FakeBackend::default()),
            Arc::new(Script::default()),
        );
        let h = Harness::build(Some((backend.clone(), agents.clone()))).await;
        (h, backend, agents)
    }

    async fn build(fakes: Option<(Arc<FakeBackend>, Arc<Script>)>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("controller.toml");
        std::fs::write(
            &config_path,
            format!(
                "state_dir = \"{d}\"\n[database]\nurl = \"sqlite://{d}/c.db\"\n\
                 [[listeners]]\naddress = \"127.0.0.1:1\"\nzone = \"admin\"\n\
                 [backend]\ncontroller_url = \"https://127.0.0.1:1\"\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let config = ControllerConfig::load(&config_path).unwrap();
        let store = Arc::new(
            Store::open(&config.database.url, 4)
                .await
                .expect("sqlite store"),
        );
        let ca = Arc::new(ControllerCa::open(&dir.path().join("ca"), 30, 14).unwrap());
        let process = Arc::new(ProcessBackend {
            root: dir.path().join("appliances"),
            run_root: dir.path().join("run"),
            binary: "/nonexistent".into(),
            first_address: "127.0.44.1".parse().unwrap(),
            slot_base: 0,
            max_appliances: 4,
            agent_port: 1,
            controller_url: "https://127.0.0.1:1".into(),
            controller_ca: ca.ca_cert_path(),
            ca_cert: ca.ca_cert_path(),
            crl: ca.crl_path(),
            heartbeat_interval: std::time::Duration::from_secs(1),
            appliance_ids: None,
            regions: vec![crate::controller::fleet::ports::Region {
                name: "local".into(),
                priority: 0,
                capacity: 4,
            }],
            flavors: Vec::new(),
            netns: None,
        });
        let (backend, agents): (Arc<dyn Backend>, Box<dyn AgentClient>) = match fakes {
            Some((backend, agents)) => (backend, Box::new(agents)),
            None => (
                process,
                Box::new(crate::transport::client::Client::new(
                    Some(ca.agent_client().unwrap()),
                    std::time::Duration::from_secs(1),
                )),
            ),
        };
        let hooks = Box::new(crate::transport::client::Client::new(
            None,
            std::time::Duration::from_secs(1),
        ));
        let fleet = Arc::new(Fleet::new(
            crate::controller::fleet::Parts {
                store: store.clone(),
                ca,
                backends: vec![("process".into(), backend)],
                agents,
                hooks,
                clock: Arc::new(crate::controller::fleet::SystemClock),
                on_revoke: Box::new(|| {}),
                mailer: None,
            },
            config,
            b"secret".to_vec(),
        ));
        let mut tokens = Vec::new();
        for (name, role) in [("root", Role::Admin), ("member", Role::Member)] {
            // Tokens only: no password hash is needed (basic auth has its own test).
            let user = store.add_user(name, role, 0).await;
            tokens.push(fleet.issue_token(user, None).await.unwrap().token);
        }
        Harness {
            router: router(Zone::Admin, fleet.clone()),
            fleet,
            member: tokens.pop().unwrap(),
            admin: tokens.pop().unwrap(),
            _dir: dir,
        }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        let r = super::serve(&self.router, req).await;
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }
}

impl Harness {
    /// The member creates an appliance: the 202 answer (its task, with the appliance).
    async fn create(&self, name: &str) -> Answer {
        let body = format!(r#"{{"name": "{name}"}}"#);
        let a = self
            .call("POST", "/v1/appliances", Some(&self.member), &body)
            .await;
        assert_eq!(a.status, 202, "{}", a.text);
        a
    }

    /// The member acts on an appliance.
    async fn act(&self, id: &str, action: &str) -> Answer {
        self.act_as(Some(&self.member), id, action).await
    }

    /// Whoever `token` names acts on an appliance.
    async fn act_as(&self, token: Option<&str>, id: &str, action: &str) -> Answer {
        let path = format!("/v1/appliances/{id}/actions");
        let body = format!(r#"{{"action": "{action}"}}"#);
        self.call("POST", &path, token, &body).await
    }

    /// The member's view of a task.
    async fn task(&self, id: &Value) -> Answer {
        let path = format!("/v1/tasks/{}", id.as_str().unwrap());
        self.call("GET", &path, Some(&self.member), "").await
    }

    /// The appliance reports that it launched.
    async fn launched(&self, id: &str) {
        let cb = Callback {
            event: CallbackEvent::Launched,
            appliance_id: None,
            status: None,
        };
        self.fleet.callback(id, cb).await.unwrap();
    }
}

/// Asserts a problem document of `status` and `kind`.
fn problem(a: &Answer, status: u16, kind: &str, what: &str) {
    assert_eq!(a.status.as_u16(), status, "{what}: {}", a.text);
    assert_eq!(
        a.headers["content-type"], "application/problem+json",
        "{what}"
    );
    assert_eq!(
        a.body["type"],
        format!("urn:applianced:problem:{kind}"),
        "{what}: {}",
        a.text
    );
    assert_eq!(a.body["status"], status, "{what}");
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_asks_for_credentials() {
    let h = Harness::new().await;
    let doc = serde_json::to_value(super::openapi()).unwrap();
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    let expected = [
        "DELETE /v1/appliances/{id}",
        "DELETE /v1/appliances/{id}/agent/{path}",
        "DELETE /v1/clusters/{id}",
        "DELETE /v1/clusters/{id}/agent/{path}",
        "DELETE /v1/enrolment-tokens/{id}",
        "DELETE /v1/keypairs/{id}",
        "DELETE /v1/service-accounts/{id}",
        "DELETE /v1/teams/{id}",
        "DELETE /v1/teams/{id}/members/{user}",
        "DELETE /v1/tokens",
        "DELETE /v1/users/{id}",
        "GET /v1/appliances",
        "GET /v1/appliances/{id}",
        "GET /v1/appliances/{id}/agent/{path}",
        "GET /v1/appliances/{id}/events",
        "GET /v1/backends",
        "GET /v1/clusters",
        "GET /v1/clusters/{id}",
        "GET /v1/enrolment-requests/{id}",
        "GET /v1/enrolment-tokens",
        "GET /v1/enrolments",
        "GET /v1/flavors",
        "GET /v1/flavors/{id}",
        "GET /v1/images",
        "GET /v1/images/{id}",
        "GET /v1/invoices",
        "GET /v1/invoices/{id}",
        "GET /v1/keypairs",
        "GET /v1/keypairs/{id}",
        "GET /v1/networks",
        "GET /v1/networks/{id}",
        "GET /v1/openapi.json",
        "GET /v1/regions",
        "GET /v1/regions/{id}",
        "GET /v1/service-accounts",
        "GET /v1/service-accounts/{id}",
        "GET /v1/tasks",
        "GET /v1/tasks/{id}",
        "GET /v1/teams",
        "GET /v1/teams/{id}",
        "GET /v1/teams/{id}/quotas",
        "GET /v1/templates",
        "GET /v1/templates/{id}",
        "GET /v1/usage",
        "GET /v1/users",
        "GET /v1/users/{id}",
        "PATCH /v1/teams/{id}",
        "PATCH /v1/users/{id}",
        "POST /v1/appliances",
        "POST /v1/appliances/{id}/actions",
        "POST /v1/appliances/{id}/agent/{path}",
        "POST /v1/appliances/{id}/ping",
        "POST /v1/clusters",
        "POST /v1/clusters/{id}/agent/{path}",
        "POST /v1/enrolment-requests",
        "POST /v1/enrolment-tokens",
        "POST /v1/enrolments/{id}/accept",
        "POST /v1/enrolments/{id}/reject",
        "POST /v1/events",
        "POST /v1/keypairs",
        "POST /v1/ping",
        "POST /v1/service-accounts",
        "POST /v1/tasks/{id}/cancel",
        "POST /v1/teams",
        "POST /v1/tokens",
        "POST /v1/users",
        "PUT /v1/appliances/{id}/agent/{path}",
        "PUT /v1/clusters/{id}/agent/{path}",
        "PUT /v1/teams/{id}/members/{user}",
        "PUT /v1/teams/{id}/quotas",
    ];
    assert_eq!(operations, expected);
    // Bodies the API does without (the defaults) are documented as optional.
    for path in ["/v1/ping", "/v1/tokens"] {
        let body = &doc["paths"][path]["post"]["requestBody"];
        assert!(body.is_object(), "{path}");
        assert_ne!(body["required"], true, "{path}: {body}");
    }
    for op in &operations {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "x")
            .replace("{user}", "u")
            .replace("{path}", "status");
        let a = h.call(method, &path, None, "").await;
        match op.as_str() {
            "GET /v1/openapi.json" => assert_eq!(a.status, 200),
            // The appliance zone's routes, not served on admin listeners.
            "POST /v1/events"
            | "POST /v1/enrolment-requests"
            | "GET /v1/enrolment-requests/{id}" => problem(&a, 404, "not-found", op),
            _ => {
                problem(&a, 401, "unauthorized", op);
                assert!(a.headers.contains_key("www-authenticate"), "{op}");
            }
        }
        // Every operation has its answers documented, problems as problem documents.
        let responses =
            &doc["paths"][op.split_once(' ').unwrap().1][method.to_lowercase()]["responses"];
        for code in ["400", "413"] {
            assert!(
                responses[code]["content"]["application/problem+json"].is_object(),
                "{op} {code}: {responses}"
            );
        }
    }
    // Unrouted paths are 404 problems, unrouted methods 405 problems with `Allow`:
    // never a silent success.
    for (method, path) in [
        ("GET", "/v1/users/a/b"),
        ("GET", "/v1/nothing"),
        ("GET", "/v1/appliances/x/agentx"),
    ] {
        let a = h.call(method, path, Some(&h.admin), "").await;
        problem(&a, 404, "not-found", &format!("{method} {path}"));
    }
    for (method, path, allow) in [
        ("GET", "/v1/tokens", "POST,DELETE"),
        ("PUT", "/v1/users/abc", "GET,HEAD,PATCH,DELETE"),
        ("TRACE", "/v1/appliances", "GET,HEAD,POST"),
        (
            "PATCH",
            "/v1/appliances/x/agent/status",
            "GET,HEAD,PUT,POST,DELETE",
        ),
    ] {
        let a = h.call(method, path, Some(&h.admin), "").await;
        problem(&a, 405, "method-not-allowed", &format!("{method} {path}"));
        assert_eq!(a.headers["allow"], allow, "{method} {path}");
    }
}

#[tokio::test]
async fn the_documentation_page_and_the_document() {
    let h = Harness::new().await;
    let a = h.call("GET", "/", None, "").await;
    assert_eq!(a.status, 200);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(a.text.contains("swagger-ui"), "{}", a.text);
    for asset in [
        "/swagger-ui.css",
        "/swagger-ui-bundle.js",
        "/swagger-initializer.js",
    ] {
        let a = h.call("GET", asset, None, "").await;
        assert_eq!(a.status, 200, "{asset}");
        assert!(!a.text.is_empty());
    }
    // Integrations' listeners serve the same page and document, and the same API to
    // service accounts' certificates only: an admin's bearer token counts for nothing.
    let api = router(Zone::Api, h.fleet.clone());
    for path in ["/", "/swagger-ui.css", "/v1/openapi.json"] {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let r = super::serve(&api, req).await;
        assert_eq!(r.status(), StatusCode::OK, "api zone: {path}");
    }
    let req = Request::builder()
        .uri("/v1/users")
        .header("authorization", format!("Bearer {}", h.admin))
        .body(Body::empty())
        .unwrap();
    let r = super::serve(&api, req).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "api zone: /v1/users");
    // The page loads this API's document, which is generated, not kept by hand.
    let init = h.call("GET", "/swagger-initializer.js", None, "").await;
    assert!(init.text.contains("/v1/openapi.json"), "{}", init.text);
    problem(
        &h.call("GET", "/nothing.js", None, "").await,
        404,
        "not-found",
        "asset",
    );
    let a = h.call("GET", "/v1/openapi.json", None, "").await;
    assert_eq!(a.body["openapi"], "3.1.0");
    assert_eq!(a.headers["content-type"], "application/json");
}

#[tokio::test]
async fn users_tokens_and_the_admin_role() {
    let h = Harness::new().await;
    let (admin, member) = (Some(h.admin.as_str()), Some(h.member.as_str()));
    assert_eq!(h.call("GET", "/v1/users", admin, "").await.status, 200);
    assert_eq!(
        h.call("GET", "/v1/users/", admin, "").await.status,
        200,
        "a trailing slash names the same resource"
    );
    problem(
        &h.call("GET", "/v1/users", member, "").await,
        403,
        "forbidden",
        "list",
    );
    let users = h.call("GET", "/v1/users", admin, "").await.body;
    let id_of = |name: &str| {
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (root_id, member_id) = (id_of("root"), id_of("member"));
    assert_eq!(
        h.call("GET", &format!("/v1/users/{member_id}"), member, "")
            .await
            .status,
        200,
        "a user reads itself"
    );
    problem(
        &h.call("GET", &format!("/v1/users/{root_id}"), member, "")
            .await,
        403,
        "forbidden",
        "another user",
    );
    problem(
        &h.call("POST", "/v1/users", member, r#"{"name": "x"}"#)
            .await,
        403,
        "forbidden",
        "create as member",
    );
    problem(
        &h.call("GET", "/v1/users/nope", admin, "").await,
        404,
        "not-found",
        "user",
    );
    problem(
        &h.call("DELETE", "/v1/users/nope", admin, "").await,
        404,
        "not-found",
        "delete",
    );
    problem(
        &h.call("GET", "/v1/users", Some("forged"), "").await,
        401,
        "unauthorized",
        "forged",
    );
    // Strict bodies.
    for bad in [
        "",
        "[]",
        "null",
        r#"["x"]"#,
        r#"["x", null, "long enough password"]"#,
        r#"{"name": "x", "extra": 1}"#,
        r#"{"name": 1}"#,
    ] {
        problem(
            &h.call("POST", "/v1/users", admin, bad).await,
            400,
            "invalid-input",
            bad,
        );
    }
    let a = h
        .call(
            "POST",
            "/v1/users",
            admin,
            r#"{"name": "ops", "password": "long enough password"}"#,
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert!(
        a.body.get("password").is_none(),
        "a chosen password is not echoed"
    );
    problem(
        &h.call("POST", "/v1/users", admin, r#"{"name": "ops"}"#)
            .await,
        409,
        "conflict",
        "taken",
    );
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(super::MAX_BODY));
    problem(
        &h.call("POST", "/v1/users", admin, &big).await,
        413,
        "payload-too-large",
        "big",
    );
    // Basic authentication: a token for a name and password; a NUL is no user.
    let basic = |user: &str, password: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    for (credentials, status) in [
        (basic("ops", "long enough password"), 201),
        (basic("ops", "wrong"), 401),
        (basic("o\0ps", "long enough password"), 401),
        ("Basic !!".to_string(), 401),
    ] {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/tokens")
            .header("authorization", &credentials)
            .body(Body::empty())
            .unwrap();
        let r = super::serve(&h.router, req).await;
        assert_eq!(r.status().as_u16(), status, "{credentials}");
    }
    assert!(auth::check_user_name("o\0ps").is_err());
}

#[tokio::test]
async fn appliances_are_visible_to_their_owner_and_admins_only() {
    let h = Harness::new().await;
    let (admin, member) = (Some(h.admin.as_str()), Some(h.member.as_str()));
    let a = h
        .call(
            "POST",
            "/v1/appliances",
            admin,
            r#"{"name": "lb-1", "external_id": "e-1"}"#,
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.headers["retry-after"], "1");
    let task = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.headers["location"], format!("/v1/tasks/{task}").as_str());
    let id = a.body["appliance"]["id"].as_str().unwrap().to_string();
    assert_eq!(a.body["appliance"]["state"], "requested");
    // The same key and request: the same task; another request: a conflict.
    let again = h
        .call(
            "POST",
            "/v1/appliances",
            admin,
            r#"{"name": "lb-1", "external_id": "e-1"}"#,
        )
        .await;
    assert_eq!(
        (again.status.as_u16(), &again.body["id"]),
        (202, &a.body["id"])
    );
    problem(
        &h.call(
            "POST",
            "/v1/appliances",
            admin,
            r#"{"name": "lb-2", "external_id": "e-1"}"#,
        )
        .await,
        409,
        "conflict",
        "reused key",
    );
    // An array is not the object it resembles, even with a value for every field.
    for bad in [
        r#"["lb", 30]"#,
        r#"["lb-3", 30, null, null, null]"#,
        "",
        r#"{"name": "x", "ttl": 1}"#,
    ] {
        problem(
            &h.call("POST", "/v1/appliances", admin, bad).await,
            400,
            "invalid-input",
            bad,
        );
    }
    for bad in [
        r#"{"name": "x", "ttl_minutes": 5}"#,
        r#"{"name": "a b"}"#,
        r#"{"name": "x", "template": "vm"}"#,
        r#"{"name": "x", "callback_url": "ftp://x"}"#,
    ] {
        problem(
            &h.call("POST", "/v1/appliances", admin, bad).await,
            422,
            "invalid-input",
            bad,
        );
    }
    // Queued, not running: 202 with Retry-After for its owner.
    let t = h.call("GET", &format!("/v1/tasks/{task}"), admin, "").await;
    assert_eq!(
        (t.status.as_u16(), &t.body["state"]),
        (202, &Value::from("queued"))
    );
    // Invisible to the member: 404, as if it did not exist.
    for (method, path) in [
        ("GET", format!("/v1/appliances/{id}")),
        ("DELETE", format!("/v1/appliances/{id}")),
        ("GET", format!("/v1/appliances/{id}/events")),
        ("POST", format!("/v1/appliances/{id}/ping")),
        ("GET", format!("/v1/appliances/{id}/agent/status")),
        ("GET", format!("/v1/tasks/{task}")),
    ] {
        problem(
            &h.call(method, &path, member, "").await,
            404,
            "not-found",
            &path,
        );
    }
    let r = h.act_as(member, &id, "stop").await;
    problem(&r, 404, "not-found", "action");
    assert_eq!(
        h.call("GET", "/v1/appliances", member, "").await.body,
        serde_json::json!([])
    );
    assert_eq!(
        h.call("GET", "/v1/tasks", member, "").await.body,
        serde_json::json!([])
    );
    problem(
        &h.call(
            "POST",
            "/v1/ping",
            member,
            &format!(r#"{{"targets": ["{id}"]}}"#),
        )
        .await,
        422,
        "invalid-input",
        "ping another's",
    );
    // The member's own appliance: readable through the pass-through, not writable.
    let mine = h
        .call("POST", "/v1/appliances", member, r#"{"name": "m"}"#)
        .await;
    let mine = mine.body["appliance"]["id"].as_str().unwrap().to_string();
    for method in ["PUT", "POST", "DELETE"] {
        problem(
            &h.call(
                method,
                &format!("/v1/appliances/{mine}/agent/instances/x/haproxy"),
                member,
                "x",
            )
            .await,
            403,
            "pass-through-read-only",
            method,
        );
    }
    // A read goes on to the appliance, whose agent is not running yet.
    problem(
        &h.call(
            "GET",
            &format!("/v1/appliances/{mine}/agent/status"),
            member,
            "",
        )
        .await,
        409,
        "conflict",
        "not running",
    );
    // Events name their actor.
    let events = h
        .call("GET", &format!("/v1/appliances/{mine}/events"), member, "")
        .await;
    assert_eq!(events.body[0]["event"], "requested");
    assert_eq!(events.body[0]["actor"], "member");
    // Actions and their checks.
    problem(
        &h.act_as(admin, &id, "explode").await,
        422,
        "invalid-input",
        "explode",
    );
    problem(
        &h.act_as(admin, &id, "start").await,
        409,
        "conflict",
        "start while requested",
    );
    // Queries: an unknown state is 422; async must say yes or no.
    problem(
        &h.call("GET", "/v1/appliances?state=sleepy", admin, "")
            .await,
        422,
        "invalid-input",
        "state",
    );
    for q in ["?async=", "?async=maybe"] {
        problem(
            &h.call("POST", &format!("/v1/ping{q}"), admin, "").await,
            400,
            "invalid-input",
            q,
        );
    }
    let listed = h.call("GET", "/v1/appliances?name=lb-1", admin, "").await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    // Nothing running: a ping of every running appliance pings none.
    let p = h.call("POST", "/v1/ping", admin, "").await;
    assert_eq!(
        (p.status.as_u16(), &p.body["targets"]),
        (200, &Value::from(0))
    );
    let p = h.call("POST", "/v1/ping?async=true", admin, "").await;
    assert_eq!(p.status, 202, "{}", p.text);
    drop(h.fleet.clone());
}

#[tokio::test]
async fn backend_and_agent_failures_are_problems() {
    use std::sync::atomic::Ordering::SeqCst;
    let (h, backend, agents) = Harness::with_fakes().await;
    let now = crate::certs::now_unix();
    // The controller's own files fail: the task's problem is internal, without details.
    backend.disk_full.store(true, SeqCst);
    let a = h.create("lb-1").await;
    assert_eq!(h.fleet.run_queued_tasks(now).await, 1);
    let t = h.task(&a.body["id"]).await;
    assert_eq!(t.body["state"], "failed", "{}", t.text);
    assert_eq!(t.body["problem"]["type"], "urn:applianced:problem:internal");
    assert_eq!(t.body["problem"]["detail"], "internal error", "{}", t.text);
    backend.disk_full.store(false, SeqCst);
    // No room left in any region: 503 at once, and nothing made or queued.
    backend.capacity.store(0, SeqCst);
    let a = h
        .call(
            "POST",
            "/v1/appliances",
            Some(&h.member),
            r#"{"name": "lb-0"}"#,
        )
        .await;
    problem(&a, 503, "no-capacity", "no room");
    assert_eq!(h.fleet.run_queued_tasks(now).await, 0);
    backend.capacity.store(200, SeqCst);

    let a = h.create("lb-2").await;
    let id = a.body["appliance"]["id"].as_str().unwrap().to_string();
    assert_eq!(h.fleet.run_queued_tasks(now).await, 1);
    h.launched(&id).await;
    // What the appliance's backend cannot do: 409 before anything is queued.
    backend.capabilities.lock().unwrap().suspend = false;
    let a = h.act(&id, "suspend").await;
    problem(&a, 409, "not-supported-by-backend", "suspend");
    let detail = &a.body["detail"];
    assert_eq!(detail, "the process backend cannot suspend appliances");
    assert_eq!(h.fleet.run_queued_tasks(now).await, 0, "nothing queued");
    // An agent that cannot be reached, every attempt: 502.
    for _ in 0..10 {
        let refused = CallError::NotSent("connection refused".into());
        agents.answers.lock().unwrap().push_back(Err(refused));
    }
    let status = format!("/v1/appliances/{id}/agent/status");
    let a = h.call("GET", &status, Some(&h.member), "").await;
    problem(&a, 502, "bad-gateway", "pass-through");
    let detail = a.body["detail"].as_str().unwrap();
    assert!(detail.contains("connection refused"), "{}", a.text);
}

#[tokio::test]
async fn seed_verbs_task_cancellation_and_log_out() {
    let (h, backend, _agents) = Harness::with_fakes().await;
    let now = crate::certs::now_unix();
    let cancel = |task: &Value| {
        let path = format!("/v1/tasks/{}/cancel", task.as_str().unwrap());
        let h = &h;
        async move { h.call("POST", &path, Some(&h.member), "").await }
    };
    // A create cancelled before it ran: its appliance is failed and nothing was made.
    let a = h.create("lb-1").await;
    let (task, first) = (&a.body["id"], a.body["appliance"]["id"].as_str().unwrap());
    let c = cancel(task).await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(
        (&c.body["state"], &c.body["kind"]),
        (&"cancelled".into(), &"create".into())
    );
    assert_eq!(
        h.fleet.run_queued_tasks(now).await,
        0,
        "nothing left to run"
    );
    let g = h
        .call(
            "GET",
            &format!("/v1/appliances/{first}"),
            Some(&h.member),
            "",
        )
        .await;
    assert_eq!(g.body["state"], "failed", "{}", g.text);
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());
    problem(&cancel(task).await, 409, "conflict", "cancelled twice");
    let nothing = cancel(&Value::from("nothing")).await;
    problem(&nothing, 404, "not-found", "no such task");

    // `off` and `on` are `stop` and `start`; those tasks are not cancelled.
    let a = h.create("lb-2").await;
    let id = a.body["appliance"]["id"].as_str().unwrap().to_string();
    assert_eq!(h.fleet.run_queued_tasks(now).await, 1);
    problem(
        &cancel(&a.body["id"]).await,
        409,
        "conflict",
        "a task that is done",
    );
    h.launched(&id).await;
    let off = h.act(&id, "off").await;
    assert_eq!(
        (off.status.as_u16(), &off.body["kind"]),
        (202, &"stop".into()),
        "{}",
        off.text
    );
    let refused = cancel(&off.body["id"]).await;
    problem(&refused, 409, "conflict", "a stop");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("moved its appliance"), "{detail}");
    assert_eq!(h.fleet.run_queued_tasks(now).await, 1);
    let on = h.act(&id, "on").await;
    assert_eq!(
        (on.status.as_u16(), &on.body["kind"]),
        (202, &"start".into()),
        "{}",
        on.text
    );
    assert_eq!(h.fleet.run_queued_tasks(now).await, 1);
    h.launched(&id).await;
    // A suspend cancelled before it ran changes nothing; admins cancel anyone's.
    let suspend = h.act(&id, "suspend").await;
    assert_eq!(suspend.status, 202, "{}", suspend.text);
    let path = format!("/v1/tasks/{}/cancel", suspend.body["id"].as_str().unwrap());
    let c = h.call("POST", &path, Some(&h.admin), "").await;
    assert_eq!(c.body["state"], "cancelled", "{}", c.text);
    assert_eq!(h.fleet.run_queued_tasks(now).await, 0);
    let g = h
        .call("GET", &format!("/v1/appliances/{id}"), Some(&h.member), "")
        .await;
    assert_eq!(g.body["state"], "active", "{}", g.text);
    assert!(!backend.calls().iter().any(|c| c.starts_with("suspend")));

    // Log out: the token stops working at once.
    let out = h.call("DELETE", "/v1/tokens", Some(&h.member), "").await;
    assert_eq!(out.status, 204, "{}", out.text);
    for (method, path) in [("GET", "/v1/tasks"), ("DELETE", "/v1/tokens")] {
        let a = h.call(method, path, Some(&h.member), "").await;
        problem(&a, 401, "unauthorized", path);
    }
    let still = h.call("GET", "/v1/tasks", Some(&h.admin), "").await;
    assert_eq!(still.status, 200, "other tokens still work");
}

#[tokio::test]
async fn the_catalogue_by_id_or_by_name() {
    let h = &Harness::new().await;
    let get = |path: String| async move {
        let a = h.call("GET", &path, Some(&h.member), "").await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        a.body
    };
    let images = get("/v1/images".into()).await;
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");
    let image = images[0].clone();
    assert_eq!(image["name"], "applianced");
    let id = image["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("applianced-"), "{id}");
    assert_eq!(get(format!("/v1/images/{id}")).await, image, "by id");
    assert_eq!(get("/v1/images/applianced".into()).await, image, "by name");
    let flavors = get("/v1/flavors".into()).await;
    assert_eq!(flavors[0]["name"], "default", "{flavors}");
    assert_eq!(get("/v1/flavors/default".into()).await, flavors[0]);
    let networks = get("/v1/networks".into()).await;
    assert_eq!(
        networks[0]["description"], "127.0.44.1 to 127.0.44.4",
        "the four configured slots: {networks}"
    );
    assert_eq!(get("/v1/networks/loopback".into()).await, networks[0]);
    let regions = get("/v1/regions".into()).await;
    assert_eq!(
        regions,
        serde_json::json!([{"name": "local", "priority": 0, "capacity": 4, "backend": "process"}])
    );
    assert_eq!(get("/v1/regions/local".into()).await, regions[0]);
    let templates = get("/v1/templates".into()).await;
    assert_eq!(
        templates,
        serde_json::json!([{"name": "process", "backend": "process", "image": id,
            "flavor": "default", "network": "loopback", "region": null}])
    );
    assert_eq!(get("/v1/templates/process".into()).await, templates[0]);
    for (path, detail) in [
        ("/v1/images/nothing", "no image \"nothing\""),
        ("/v1/flavors/large", "no flavor \"large\""),
        ("/v1/networks/x", "no network \"x\""),
        ("/v1/regions/mars", "no region \"mars\""),
        ("/v1/templates/ec2", "no template \"ec2\""),
    ] {
        let a = h.call("GET", path, Some(&h.member), "").await;
        problem(&a, 404, "not-found", path);
        assert_eq!(a.body["detail"], detail);
    }
}
