//! Teams and the security model, black-box, on SQLite and on PostgreSQL: the real
//! controller binary with real appliances, an admin, two teams, an owner, a member, a
//! viewer and an outsider, each rule of the spec's security model tried through the
//! northbound API, and a team's quota under concurrent creates.

mod common;

use std::time::Duration;

use std::net::SocketAddr;

use base64::Engine;
use common::controller::Controller;
use common::{Client, Creds, free_port};
use serde_json::{Value, json};

/// Creates a user through the API (no personal team); returns its token.
async fn user(c: &Controller, root: &str, name: &str) -> String {
    let body = json!({
        "name": name,
        "personal_team": false,
        "display_name": format!("{name} (test)"),
        "email": format!("{name}@example.com"),
    });
    let r = c.call(root, "POST", "/v1/users", &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    assert_eq!(created["email"], format!("{name}@example.com"));
    let password = created["password"].as_str().unwrap().to_string();
    c.token(name, &password).await
}

fn problem(r: &common::Resp, status: u16, kind: &str, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{what}"
    );
    let p = r.json();
    assert_eq!(
        p["type"],
        format!("urn:applianced:problem:{kind}"),
        "{what}: {p}"
    );
    p
}

/// Service accounts on the `api` listener: a client certificate the controller issues,
/// acting for one team with its team role, and nothing more; deleted, its certificate
/// is refused in the handshake.
async fn service_accounts(
    c: &Controller,
    api: SocketAddr,
    root: &str,
    olga: &str,
    appliance: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let account = |name: &str, role: &str| json!({"name": name, "team": "blue", "role": role});
    let r = c
        .call(
            olga,
            "POST",
            "/v1/service-accounts",
            &account("ci", "member").to_string(),
        )
        .await;
    problem(&r, 403, "forbidden", "an owner creating a service account");
    let mut creds = Vec::new();
    for (name, role) in [("ci", "member"), ("watch", "viewer"), ("lead", "owner")] {
        let r = c
            .call(
                root,
                "POST",
                "/v1/service-accounts",
                &account(name, role).to_string(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let made = r.json();
        let subject = made["subject"].as_str().unwrap();
        assert!(
            subject.starts_with(&format!("service-account.{name}.")),
            "{subject}"
        );
        let cert = dir.path().join(format!("{name}.crt"));
        let key = dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, made["certificate"].as_str().unwrap()).unwrap();
        std::fs::write(&key, made["private_key"].as_str().unwrap()).unwrap();
        creds.push((
            made["id"].as_str().unwrap().to_string(),
            Creds { cert, key },
        ));
    }
    // Shown once: the list and the account itself carry no key.
    let r = c.call(root, "GET", "/v1/service-accounts", "").await;
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert!(!r.body.contains("PRIVATE KEY"), "{}", r.body);
    let r = c
        .call(
            root,
            "GET",
            &format!("/v1/service-accounts/{}", creds[0].0),
            "",
        )
        .await;
    assert_eq!(r.json()["role"], "member");
    assert!(!r.body.contains("PRIVATE KEY"), "{}", r.body);
    for (bad, what) in [
        (
            json!({"name": "x", "team": "nowhere", "role": "member"}),
            "no such team",
        ),
        (
            json!({"name": "x", "team": "blue", "role": "admin"}),
            "not a team role",
        ),
        (
            json!({"name": "x", "team": "blue", "role": "member", "subject": appliance}),
            "an appliance's name as subject",
        ),
        (
            json!({"name": "x", "team": "blue", "role": "member", "subject": "applianced-controller"}),
            "the controller's name as subject",
        ),
    ] {
        let r = c
            .call(root, "POST", "/v1/service-accounts", &bad.to_string())
            .await;
        problem(&r, 422, "invalid-input", what);
    }
    let r = c
        .call(
            root,
            "POST",
            "/v1/service-accounts",
            &account("ci", "viewer").to_string(),
        )
        .await;
    problem(&r, 409, "conflict", "a taken name");
    // An account of the operator's own PKI: no certificate from the controller.
    let r = c
        .call(
            root,
            "POST",
            "/v1/service-accounts",
            r#"{"name": "ext", "team": "blue", "role": "viewer", "subject": "ext-ci.example"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.json().get("private_key").is_none(), "{}", r.body);
    let ext = r.json()["id"].as_str().unwrap().to_string();

    let call = |creds: &Creds, method: &'static str, path: String, body: &'static str| {
        let client = Client::new(&c.ca_cert(), Some(creds));
        async move {
            let mut conn = client.connect(api).await.unwrap();
            conn.request(
                method,
                &path,
                body.as_bytes(),
                &[("content-type", "application/json")],
            )
            .await
            .unwrap()
        }
    };
    let (ci, watch, lead) = (&creds[0].1, &creds[1].1, &creds[2].1);
    let one = format!("/v1/appliances/{appliance}");
    // It sees its team and what the team owns, nothing else.
    let r = call(ci, "GET", "/v1/teams".into(), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, ["blue"]);
    for creds in [ci, watch] {
        let r = call(creds, "GET", one.clone(), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = call(creds, "GET", format!("{one}/agent/status"), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = call(creds, "PUT", format!("{one}/agent/instances/x/503"), "x").await;
        problem(&r, 403, "pass-through-read-only", "an account writing");
        let r = call(creds, "GET", "/v1/teams/red".into(), "").await;
        problem(&r, 404, "not-found", "another team");
        let r = call(creds, "GET", "/v1/users".into(), "").await;
        problem(&r, 403, "forbidden", "an account listing users");
    }
    // Tasks: an owner account lists its team's (the appliance's create among them), as
    // an owner user does; a member account only those it queued (none).
    let r = call(lead, "GET", "/v1/tasks".into(), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tasks = r.json();
    let create = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["appliance_id"] == appliance && t["kind"] == "create")
        .unwrap_or_else(|| panic!("the team's create task in {tasks}"))
        .clone();
    let r = call(
        lead,
        "GET",
        format!("/v1/tasks/{}", create["id"].as_str().unwrap()),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(ci, "GET", "/v1/tasks".into(), "").await;
    assert_eq!(r.json(), json!([]), "a member account's list");
    // Its role: a member makes a key pair, a viewer does not, nor acts.
    let r = call(ci, "POST", "/v1/keypairs".into(), r#"{"name": "from-ci"}"#).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["created_by"], creds[0].0.as_str());
    assert_eq!(
        r.json()["team_id"],
        c.call(root, "GET", "/v1/teams/blue", "").await.json()["id"]
    );
    let keypair = r.json()["id"].as_str().unwrap().to_string();
    let r = call(
        watch,
        "POST",
        "/v1/keypairs".into(),
        r#"{"name": "from-watch"}"#,
    )
    .await;
    problem(&r, 403, "forbidden", "a viewer account making a key pair");
    let r = call(
        watch,
        "POST",
        format!("{one}/actions"),
        r#"{"action": "stop"}"#,
    )
    .await;
    problem(&r, 403, "forbidden", "a viewer account acting");
    let r = call(ci, "DELETE", format!("/v1/keypairs/{keypair}"), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    // Only accounts' certificates count there: not a password, not an appliance's
    // certificate.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("root:anything")
    );
    let mut conn = Client::new(&c.ca_cert(), Some(ci))
        .connect(api)
        .await
        .unwrap();
    let r = conn
        .request("POST", "/v1/tokens", b"", &[("authorization", &basic)])
        .await
        .unwrap();
    problem(&r, 401, "unauthorized", "a password on the api listener");
    let agent = c.appliance_creds(appliance);
    let mut conn = Client::new(&c.ca_cert(), Some(&agent))
        .connect(api)
        .await
        .unwrap();
    let r = conn.request("GET", "/v1/teams", b"", &[]).await.unwrap();
    problem(&r, 401, "unauthorized", "an appliance's certificate");
    // Deleted: it stops at once, its certificate refused in the handshake.
    let r = c
        .call(
            root,
            "DELETE",
            &format!("/v1/service-accounts/{}", creds[0].0),
            "",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let refused = match Client::new(&c.ca_cert(), Some(ci)).connect(api).await {
        Err(_) => true,
        Ok(mut conn) => conn.request("GET", "/v1/teams", b"", &[]).await.is_err(),
    };
    assert!(refused, "a deleted account's certificate still connects");
    let r = call(watch, "GET", "/v1/teams".into(), "").await;
    assert_eq!(r.status, 200, "the other account still works: {}", r.body);
    // A team with accounts is not deleted; they go first.
    for id in [&creds[1].0, &creds[2].0, &ext] {
        let r = c
            .call(root, "DELETE", &format!("/v1/service-accounts/{id}"), "")
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
    }
}

async fn scenario(db_url: &str, net: u8) {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let c = Controller::start(
        db_url,
        &format!("127.0.{net}.1"),
        &format!("[[listeners]]\naddress = \"{api}\"\nzone = \"api\"\n"),
    );
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    let olga = user(&c, &root, "olga").await;
    let mike = user(&c, &root, "mike").await;
    let vera = user(&c, &root, "vera").await;
    let otto = user(&c, &root, "otto").await;

    // The admin's personal team came with `user add`.
    let r = c.call(&root, "GET", "/v1/teams", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0]["name"], "root");

    // Teams: admins create them (members may not, by default); names are checked.
    let r = c
        .call(&olga, "POST", "/v1/teams", r#"{"name": "blue"}"#)
        .await;
    problem(&r, 403, "forbidden", "a member creating a team");
    for bad in [r#"{"name": "a b"}"#, r#"{"name": ""}"#] {
        let r = c.call(&root, "POST", "/v1/teams", bad).await;
        problem(&r, 422, "invalid-input", bad);
    }
    let r = c.call(&root, "POST", "/v1/teams", r#"{"nom": "x"}"#).await;
    problem(&r, 400, "invalid-input", "an unknown field");
    let r = c
        .call(&root, "POST", "/v1/teams", r#"{"name": "blue"}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let blue = r.json();
    let blue_id = blue["id"].as_str().unwrap().to_string();
    assert_eq!(blue["members"][0]["name"], "root");
    assert_eq!(blue["members"][0]["role"], "owner");
    let r = c
        .call(&root, "POST", "/v1/teams", r#"{"name": "blue"}"#)
        .await;
    problem(&r, 409, "conflict", "a taken name");
    let r = c
        .call(&root, "POST", "/v1/teams", r#"{"name": "red"}"#)
        .await;
    assert_eq!(r.status, 201);

    // Members by name or id; then the admin leaves the team to its owner.
    for (who, role) in [("olga", "owner"), ("mike", "member"), ("vera", "viewer")] {
        let r = c
            .call(
                &root,
                "PUT",
                &format!("/v1/teams/blue/members/{who}"),
                &json!({"role": role}).to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = c
        .call(
            &root,
            "PUT",
            "/v1/teams/blue/members/mike",
            r#"{"role": "boss"}"#,
        )
        .await;
    problem(&r, 422, "invalid-input", "not a team role");
    let r = c
        .call(
            &root,
            "PUT",
            "/v1/teams/blue/members/nobody",
            r#"{"role": "viewer"}"#,
        )
        .await;
    problem(&r, 404, "not-found", "no such user");
    let r = c
        .call(
            &root,
            "DELETE",
            &format!("/v1/teams/{blue_id}/members/root"),
            "",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.call(&vera, "GET", "/v1/teams/blue", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let members: Vec<(String, String)> = r.json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [("mike", "member"), ("olga", "owner"), ("vera", "viewer")];
    assert_eq!(
        members,
        expected.map(|(n, r)| (n.to_string(), r.to_string()))
    );

    // The outsider: blue does not exist for it (by name or id), nor its appliances.
    for path in ["/v1/teams/blue", &format!("/v1/teams/{blue_id}")] {
        let r = c.call(&otto, "GET", path, "").await;
        problem(&r, 404, "not-found", path);
        let r = c.call(&otto, "GET", &format!("{path}/quotas"), "").await;
        problem(&r, 404, "not-found", path);
    }
    let r = c.call(&otto, "GET", "/v1/teams", "").await;
    assert_eq!(r.json(), json!([]));

    // Key pairs: a member generates one (the private key comes back this once) and
    // imports one; a viewer does neither; an outsider does not see them.
    let r = c
        .call(&mike, "POST", "/v1/keypairs", r#"{"name": "deploy"}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let deploy = r.json();
    assert_eq!(deploy["team_id"], blue_id);
    assert_eq!(deploy["algorithm"], "ssh-ed25519");
    let private =
        ssh_key::PrivateKey::from_openssh(deploy["private_key"].as_str().unwrap()).unwrap();
    assert_eq!(
        private
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string(),
        deploy["fingerprint"].as_str().unwrap()
    );
    assert_eq!(
        private.public_key().to_openssh().unwrap(),
        deploy["public_key"].as_str().unwrap()
    );
    let deploy_path = format!("/v1/keypairs/{}", deploy["id"].as_str().unwrap());
    for token in [&mike, &vera, &olga, &root] {
        let r = c.call(token, "GET", &deploy_path, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.json().get("private_key").is_none(), "{}", r.body);
        assert!(!r.body.contains("PRIVATE KEY"));
        let r = c.call(token, "GET", "/v1/keypairs", "").await;
        assert!(!r.body.contains("PRIVATE KEY"));
        assert_eq!(r.json().as_array().unwrap().len(), 1);
    }
    let r = c.call(&otto, "GET", &deploy_path, "").await;
    problem(&r, 404, "not-found", "another team's key pair");
    let r = c.call(&otto, "DELETE", &deploy_path, "").await;
    problem(&r, 404, "not-found", "deleting another team's key pair");
    let r = c.call(&otto, "GET", "/v1/keypairs", "").await;
    assert_eq!(r.json(), json!([]));
    let r = c
        .call(&mike, "POST", "/v1/keypairs", r#"{"name": "deploy"}"#)
        .await;
    problem(&r, 409, "conflict", "a name the team uses");
    let r = c
        .call(
            &vera,
            "POST",
            "/v1/keypairs",
            r#"{"name": "mine", "team": "blue"}"#,
        )
        .await;
    problem(&r, 403, "forbidden", "a viewer making a key pair");
    let r = c
        .call(
            &mike,
            "POST",
            "/v1/keypairs",
            r#"{"name": "big", "type": "rsa-4096"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let big = r.json();
    assert_eq!(big["algorithm"], "ssh-rsa");
    let import = json!({"name": "laptop", "public_key": big["public_key"]});
    let r = c
        .call(&olga, "POST", "/v1/keypairs", &import.to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.json().get("private_key").is_none(), "{}", r.body);
    assert_eq!(r.json()["fingerprint"], big["fingerprint"]);
    for (bad, what) in [
        (
            json!({"name": "x", "public_key": "ssh-ed25519 AAAA"}),
            "an unreadable key",
        ),
        (json!({"name": "x", "type": "dsa"}), "an unknown type"),
        (
            json!({"name": "x", "type": "ed25519", "public_key": big["public_key"]}),
            "both",
        ),
        (json!({"name": "a b"}), "a bad name"),
    ] {
        let r = c
            .call(&mike, "POST", "/v1/keypairs", &bad.to_string())
            .await;
        problem(&r, 422, "invalid-input", what);
    }
    for name in ["big", "laptop"] {
        let k = c.call(&mike, "GET", "/v1/keypairs", "").await.json();
        let id = k
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = c
            .call(&mike, "DELETE", &format!("/v1/keypairs/{id}"), "")
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
    }

    // Creating: a member of blue (its only team, so the default), with its key pair.
    let (accepted, task) = c
        .run_task(
            &mike,
            "POST",
            "/v1/appliances",
            r#"{"name": "lb-1", "ttl_minutes": 30, "keypair": "deploy"}"#,
        )
        .await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let appliance = accepted["appliance"].clone();
    let id = appliance["id"].as_str().unwrap().to_string();
    assert_eq!(appliance["team_id"], blue_id);
    assert_eq!(accepted["team_id"], blue_id);
    c.wait_state(&mike, &id, "active", Duration::from_secs(30))
        .await;
    let task_path = format!("/v1/tasks/{}", accepted["id"].as_str().unwrap());
    // The process backend installed the key pair in the appliance's directory.
    let installed = c
        .state_dir()
        .join(format!("appliances/{id}/authorized_keys"));
    assert_eq!(
        std::fs::read_to_string(installed).unwrap(),
        format!("{}\n", deploy["public_key"].as_str().unwrap())
    );
    let r = c
        .call(
            &mike,
            "POST",
            "/v1/appliances",
            r#"{"name": "lb-9", "keypair": "big"}"#,
        )
        .await;
    problem(
        &r,
        422,
        "invalid-input",
        "a key pair the team does not have",
    );
    // A viewer does not create; an outsider naming blue hears what it would hear of a
    // team that does not exist.
    let body = r#"{"name": "lb-2", "team": "blue"}"#;
    let r = c.call(&vera, "POST", "/v1/appliances", body).await;
    problem(&r, 403, "forbidden", "a viewer creating");
    let r = c.call(&otto, "POST", "/v1/appliances", body).await;
    let hidden = problem(&r, 422, "invalid-input", "an outsider naming blue");
    let r = c
        .call(
            &otto,
            "POST",
            "/v1/appliances",
            r#"{"name": "lb-2", "team": "nowhere"}"#,
        )
        .await;
    let missing = problem(&r, 422, "invalid-input", "a team that does not exist");
    assert_eq!(
        hidden["detail"].as_str().unwrap().replace("blue", "T"),
        missing["detail"].as_str().unwrap().replace("nowhere", "T")
    );
    let r = c
        .call(&otto, "POST", "/v1/appliances", r#"{"name": "x"}"#)
        .await;
    let p = problem(&r, 422, "invalid-input", "no team at all");
    assert!(p["detail"].as_str().unwrap().contains("team"), "{p}");

    // Reading: the team's members, viewers included, and admins.
    let one = format!("/v1/appliances/{id}");
    for token in [&root, &olga, &mike, &vera] {
        let r = c.call(token, "GET", &one, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = c.call(token, "GET", "/v1/appliances", "").await;
        assert_eq!(r.json().as_array().unwrap().len(), 1);
        let r = c
            .call(token, "GET", &format!("{one}/agent/status"), "")
            .await;
        assert_eq!(r.status, 200, "the pass-through reads: {}", r.body);
    }
    for path in [
        one.clone(),
        format!("{one}/events"),
        format!("{one}/agent/status"),
    ] {
        let r = c.call(&otto, "GET", &path, "").await;
        problem(&r, 404, "not-found", &path);
    }
    let r = c.call(&otto, "GET", "/v1/appliances", "").await;
    assert_eq!(r.json(), json!([]));
    let r = c.call(&otto, "POST", &format!("{one}/ping"), "").await;
    problem(&r, 404, "not-found", "an outsider's ping");

    // Operating: viewers and outsiders do not; the pass-through writes only for admins.
    let stop = r#"{"action": "stop"}"#;
    let r = c.call(&vera, "POST", &format!("{one}/actions"), stop).await;
    problem(&r, 403, "forbidden", "a viewer acting");
    let r = c.call(&vera, "DELETE", &one, "").await;
    problem(&r, 403, "forbidden", "a viewer deleting");
    let r = c.call(&otto, "POST", &format!("{one}/actions"), stop).await;
    problem(&r, 404, "not-found", "an outsider acting");
    for token in [&olga, &mike, &vera] {
        let r = c
            .call(token, "PUT", &format!("{one}/agent/instances/x/503"), "x")
            .await;
        problem(&r, 403, "pass-through-read-only", "a tenant writing");
    }

    // Tasks: the creator, the team's owners and admins read it; others do not.
    for token in [&mike, &olga, &root] {
        let r = c.call(token, "GET", &task_path, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for token in [&vera, &otto] {
        let r = c.call(token, "GET", &task_path, "").await;
        problem(&r, 404, "not-found", "someone else's task");
        let r = c.call(token, "GET", "/v1/tasks", "").await;
        assert_eq!(r.json(), json!([]));
    }

    // Members: owners manage them, members and viewers do not; anyone may leave; the
    // last owner may neither leave nor step down.
    let viewer_role = r#"{"role": "viewer"}"#;
    let r = c
        .call(&mike, "PUT", "/v1/teams/blue/members/otto", viewer_role)
        .await;
    problem(&r, 403, "forbidden", "a member managing members");
    // Only admins add users to a team: an owner cannot, and hears the same whether the
    // user exists or not.
    let r = c
        .call(&olga, "PUT", "/v1/teams/blue/members/otto", viewer_role)
        .await;
    let exists = problem(&r, 403, "forbidden", "an owner adding a user");
    let r = c
        .call(&olga, "PUT", "/v1/teams/blue/members/nobody", viewer_role)
        .await;
    let missing = problem(&r, 403, "forbidden", "an owner adding nobody");
    assert_eq!(exists["detail"], missing["detail"]);
    let r = c
        .call(&root, "PUT", "/v1/teams/blue/members/otto", viewer_role)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // An owner changes a member's role.
    let r = c
        .call(
            &olga,
            "PUT",
            "/v1/teams/blue/members/otto",
            r#"{"role": "viewer"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.call(&otto, "GET", &one, "").await;
    assert_eq!(r.status, 200, "otto is a viewer now: {}", r.body);
    let r = c
        .call(&otto, "DELETE", "/v1/teams/blue/members/otto", "")
        .await;
    assert_eq!(r.status, 204, "otto leaves: {}", r.body);
    let r = c.call(&otto, "GET", &one, "").await;
    problem(&r, 404, "not-found", "after leaving");
    let r = c
        .call(&olga, "DELETE", "/v1/teams/blue/members/olga", "")
        .await;
    problem(&r, 409, "conflict", "the last owner leaving");
    let r = c
        .call(
            &olga,
            "PUT",
            "/v1/teams/blue/members/olga",
            r#"{"role": "member"}"#,
        )
        .await;
    problem(&r, 409, "conflict", "the last owner stepping down");

    // Users: a user changes its own profile, not its role, nor another user.
    let r = c
        .call(
            &mike,
            "PATCH",
            "/v1/users/mike",
            r#"{"display_name": "Mike"}"#,
        )
        .await;
    problem(&r, 403, "forbidden", "a user id that is a name");
    let me = c.call(&root, "GET", "/v1/users", "").await.json();
    let id_of = |name: &str| {
        me.as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mike_path = format!("/v1/users/{}", id_of("mike"));
    let r = c
        .call(
            &mike,
            "PATCH",
            &mike_path,
            r#"{"display_name": "Mike", "email": null}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["display_name"].clone(), r.json()["email"].clone()),
        (json!("Mike"), Value::Null)
    );
    let r = c
        .call(&mike, "PATCH", &mike_path, r#"{"role": "admin"}"#)
        .await;
    problem(&r, 403, "forbidden", "a member promoting itself");
    let r = c
        .call(&mike, "PATCH", &mike_path, r#"{"email": "not an address"}"#)
        .await;
    problem(&r, 422, "invalid-input", "a bad e-mail");
    let vera_path = format!("/v1/users/{}", id_of("vera"));
    let r = c
        .call(&mike, "PATCH", &vera_path, r#"{"display_name": "V"}"#)
        .await;
    problem(&r, 403, "forbidden", "another user");

    service_accounts(&c, api, &root, &olga, &id).await;
    let r = c.call(&olga, "DELETE", "/v1/teams/blue", "").await;
    problem(&r, 409, "conflict", "a team with appliances");

    // Quotas: admins set them; a create over the quota is 403 with the quota and its use.
    let r = c
        .call(
            &olga,
            "PUT",
            "/v1/teams/blue/quotas",
            r#"{"max_appliances": 1}"#,
        )
        .await;
    problem(&r, 403, "forbidden", "an owner setting quotas");
    let r = c
        .call(
            &root,
            "PUT",
            "/v1/teams/blue/quotas",
            r#"{"max_appliances": -1}"#,
        )
        .await;
    problem(&r, 422, "invalid-input", "a negative quota");
    let r = c
        .call(
            &root,
            "PUT",
            "/v1/teams/blue/quotas",
            r#"{"max_appliances": 1, "max_keypairs": 5}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"max_appliances": 1, "max_appliance_minutes": null, "max_keypairs": 5})
    );
    let r = c
        .call(&mike, "POST", "/v1/appliances", r#"{"name": "lb-2"}"#)
        .await;
    let p = problem(&r, 403, "quota-exceeded", "over the quota");
    assert_eq!(
        (p["quota"].clone(), p["limit"].clone(), p["used"].clone()),
        (json!("max_appliances"), json!(1), json!(1))
    );

    // A team with live appliances is not deleted; once they are gone, it is.
    let r = c.call(&olga, "DELETE", "/v1/teams/blue", "").await;
    problem(&r, 409, "conflict", "a team with appliances");
    let (_, done) = c.run_task(&mike, "DELETE", &one, "").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let r = c.call(&mike, "DELETE", "/v1/teams/blue", "").await;
    problem(&r, 403, "forbidden", "a member deleting the team");
    // Before the team goes, its draft is what its invoice will say.
    let r = c.call(&olga, "GET", "/v1/invoices?team=blue", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let draft = r.json()["items"][0].clone();
    assert_eq!(draft["status"], "draft");
    let r = c.call(&olga, "DELETE", "/v1/teams/blue", "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c
        .call(&root, "GET", &format!("/v1/teams/{blue_id}"), "")
        .await;
    problem(&r, 404, "not-found", "a deleted team");
    // Its invoice was issued as it went, and stays for admins.
    let path = format!("/v1/invoices/{}", draft["id"].as_str().unwrap());
    let r = c.call(&root, "GET", &path, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let issued = r.json();
    assert_eq!(issued["status"], "issued");
    assert_eq!(issued["lines"], draft["lines"]);
    let r = c.call(&olga, "GET", &path, "").await;
    problem(
        &r,
        404,
        "not-found",
        "a deleted team's invoice, for its former owner",
    );
}

#[tokio::test]
async fn teams_and_the_security_model_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&format!("sqlite://{}/c.db", dir.path().display()), 46).await;
}

#[tokio::test]
async fn teams_and_the_security_model_on_postgres() {
    let pg = common::postgres::Postgres::start();
    scenario(&pg.url, 47).await;
}
