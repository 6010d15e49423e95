//! Teams and the security model, black-box, on SQLite and on PostgreSQL: the real
//! controller binary with real appliances, an admin, two teams, an owner, a member, a
//! viewer and an outsider, each rule of the spec's security model tried through the
//! northbound API, and a team's quota under concurrent creates.

mod common;

use std::time::Duration;

use common::controller::Controller;
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

async fn scenario(db_url: &str, net: u8) {
    let c = Controller::start(db_url, &format!("127.0.{net}.1"), "");
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

    // Creating: a member of blue (its only team, so the default).
    let (accepted, task) = c
        .run_task(
            &mike,
            "POST",
            "/v1/appliances",
            r#"{"name": "lb-1", "ttl_minutes": 30}"#,
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
    let r = c
        .call(&olga, "PUT", "/v1/teams/blue/members/otto", viewer_role)
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
    let r = c.call(&olga, "DELETE", "/v1/teams/blue", "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c
        .call(&root, "GET", &format!("/v1/teams/{blue_id}"), "")
        .await;
    problem(&r, 404, "not-found", "a deleted team");
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
