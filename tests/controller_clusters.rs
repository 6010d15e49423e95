//! Clusters, black-box, on SQLite and on PostgreSQL: an active-standby pair of real
//! appliances; a write to the cluster reaches the active member's agent first and the
//! standby's after it (their real haproxy then serves the configuration); a write the
//! active member refuses never reaches the standby; deleting the cluster destroys both.

mod common;

use std::time::Duration;

use common::controller::{Controller, http_get, served_by_config};
use serde_json::{Value, json};

const INSTANCE: &str = "6f1c2a9e-4b3d-4e5f-8a7b-9c0d1e2f3a4b";

/// When the agent of an appliance logged a request to `path` with `method` (its log
/// line's timestamp), each time it did.
fn logged(c: &Controller, id: &str, method: &str, path: &str) -> Vec<String> {
    let log = c.state_dir().join(format!("appliances/{id}/agent.log"));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(&format!("method={method}")) && l.contains(&format!("path={path} ")))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

async fn scenario(db_url: &str, net: u8) {
    let c = Controller::start(db_url, &format!("127.0.{net}.1"), "");
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    let r = c
        .call(
            &root,
            "POST",
            "/v1/clusters",
            r#"{"name": "edge", "topology": "ACTIVE_STANDBY"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let cluster = r.json();
    let cid = cluster["id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for name in ["edge-a", "edge-b"] {
        let body = json!({"name": name, "cluster": "edge"});
        let (accepted, done) = c
            .run_task(&root, "POST", "/v1/appliances", &body.to_string())
            .await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(accepted["appliance"]["cluster_id"], cid);
        ids.push(accepted["appliance"]["id"].as_str().unwrap().to_string());
    }
    let r = c
        .call(
            &root,
            "POST",
            "/v1/appliances",
            r#"{"name": "edge-c", "cluster": "edge"}"#,
        )
        .await;
    assert_eq!(r.status, 409, "a pair holds two: {}", r.body);
    let mut addresses = Vec::new();
    for id in &ids {
        let a = c
            .wait_state(&root, id, "active", Duration::from_secs(30))
            .await;
        addresses.push(a["address"].as_str().unwrap().to_string());
    }
    let detail = c
        .call(&root, "GET", &format!("/v1/clusters/{cid}"), "")
        .await
        .json();
    assert_eq!(detail["active_id"], ids[0].as_str(), "{detail}");
    let roles: Vec<&Value> = detail["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["role"])
        .collect();
    assert_eq!(roles, [&json!("active"), &json!("standby")]);

    // One write to the cluster: both appliances serve it, the active one took it first.
    let path = format!("/instances/{INSTANCE}/haproxy");
    let port = common::free_port();
    let (accepted, done) = c
        .run_task(
            &root,
            "PUT",
            &format!("/v1/clusters/{cid}/agent{path}"),
            &served_by_config(port),
        )
        .await;
    assert_eq!(accepted["kind"], "cluster-write");
    assert_eq!(done["state"], "succeeded", "{done}");
    let members = done["result"]["members"].as_array().unwrap();
    assert_eq!(members[0]["appliance_id"], ids[0].as_str());
    assert_eq!(
        (&members[0]["outcome"], &members[0]["status"]),
        (&json!("applied"), &json!(201))
    );
    assert_eq!(members[1]["outcome"], "applied", "{done}");
    for address in &addresses {
        let served = http_get(&format!("{address}:{port}")).await.unwrap();
        assert!(served.contains(&format!("served by {address}")), "{served}");
    }
    let (first, second) = (
        logged(&c, &ids[0], "PUT", &path),
        logged(&c, &ids[1], "PUT", &path),
    );
    assert_eq!((first.len(), second.len()), (1, 1), "{first:?} {second:?}");
    assert!(
        first[0] <= second[0],
        "active {first:?}, standby {second:?}"
    );

    // A write the active member refuses does not reach the standby.
    let (_, done) = c
        .run_task(
            &root,
            "PUT",
            &format!("/v1/clusters/{cid}/agent{path}"),
            "not haproxy",
        )
        .await;
    assert_eq!(done["state"], "failed", "{done}");
    let outcomes: Vec<&Value> = done["problem"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["outcome"])
        .collect();
    assert_eq!(outcomes, [&json!("failed"), &json!("skipped")], "{done}");
    assert_eq!(logged(&c, &ids[0], "PUT", &path).len(), 2);
    assert_eq!(
        logged(&c, &ids[1], "PUT", &path).len(),
        1,
        "not sent to the standby"
    );
    assert!(
        http_get(&format!("{}:{port}", addresses[1]))
            .await
            .unwrap()
            .contains("served by")
    );

    // Members read through their appliances, not the cluster; writes need an admin.
    let r = c
        .call(&root, "GET", &format!("/v1/clusters/{cid}/agent{path}"), "")
        .await;
    assert_eq!(r.status, 405, "{}", r.body);

    // Deleting the cluster destroys its appliances.
    let (_, done) = c
        .run_task(&root, "DELETE", &format!("/v1/clusters/{cid}"), "")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["destroy_tasks"].as_array().unwrap().len(), 2);
    for id in &ids {
        c.wait_state(&root, id, "deleted", Duration::from_secs(30))
            .await;
        assert!(c.agents_of(id).is_empty());
    }
    let r = c
        .call(&root, "GET", &format!("/v1/clusters/{cid}"), "")
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn an_active_standby_cluster_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&format!("sqlite://{}/c.db", dir.path().display()), 52).await;
}

#[tokio::test]
async fn an_active_standby_cluster_on_postgres() {
    let pg = common::postgres::Postgres::start();
    scenario(&pg.url, 53).await;
}
