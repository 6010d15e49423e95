//! The catalogue and placement, black-box, on SQLite and on PostgreSQL: configured
//! regions with priorities and capacities, flavors whose limits the process backend
//! puts on the real agent process, templates, and creates from a template or from an
//! image, a flavor and a network named by id or by name.

mod common;

use std::time::Duration;

use common::controller::Controller;
use serde_json::{Value, json};

const CATALOGUE: &str = "\
[[regions]]\nname = \"far\"\npriority = 2\ncapacity = 1\n\
[[regions]]\nname = \"near\"\npriority = 1\ncapacity = 1\n\
[[flavors]]\nname = \"small\"\nmemory_mb = 512\nopen_files = 2048\ncpu_nice = 5\n\
[[flavors]]\nname = \"large\"\n\
[[templates]]\nname = \"edge\"\nflavor = \"small\"\n\
[[templates]]\nname = \"pinned\"\nflavor = \"large\"\nregion = \"far\"\n\
[prices]\ncurrency = \"EUR\"\ntemplates = { edge = 7 }\nflavors = { small = 2, large = 5 }\n";

fn problem(r: &common::Resp, status: u16, kind: &str, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    let p = r.json();
    assert_eq!(
        p["type"],
        format!("urn:applianced:problem:{kind}"),
        "{what}: {p}"
    );
    p
}

/// One limit of `/proc/PID/limits` (its soft value).
fn limit(pid: i32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap();
    line[name.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The niceness of a process (the 19th field of `/proc/PID/stat`).
fn niceness(pid: i32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

async fn scenario(db_url: &str, net: u8) {
    let c = Controller::start(db_url, &format!("127.0.{net}.1"), CATALOGUE);
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    let get = |path: &'static str| {
        let (c, root) = (&c, &root);
        async move {
            let r = c.call(root, "GET", path, "").await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            r.json()
        }
    };

    // The catalogue, each entry by id and by name.
    let regions = get("/v1/regions").await;
    assert_eq!(
        regions,
        json!([{"name": "near", "priority": 1, "capacity": 1, "backend": "process"},
               {"name": "far", "priority": 2, "capacity": 1, "backend": "process"}])
    );
    let flavors = get("/v1/flavors").await;
    let names: Vec<&Value> = flavors
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["name"])
        .collect();
    assert_eq!(names, [&json!("small"), &json!("large")]);
    let small = get("/v1/flavors/small").await;
    assert_eq!(
        small["description"],
        "512 MiB of memory per process, 2048 open files per process, CPU niceness 5"
    );
    let image = get("/v1/images").await[0].clone();
    let (image_id, image_name) = (
        image["id"].as_str().unwrap(),
        image["name"].as_str().unwrap(),
    );
    assert_ne!(image_id, image_name);
    for path in [
        format!("/v1/images/{image_id}"),
        format!("/v1/images/{image_name}"),
    ] {
        let r = c.call(&root, "GET", &path, "").await;
        assert_eq!(r.json(), image, "{path}");
    }
    let templates = get("/v1/templates").await;
    assert_eq!(templates[0]["name"], "edge");
    assert_eq!(templates[0]["region"], Value::Null);
    assert_eq!(templates[1]["region"], "far");
    let r = c.call(&root, "GET", "/v1/templates/nothing", "").await;
    problem(&r, 404, "not-found", "an unknown template");

    // Bad combinations are refused, naming the field; nothing is made.
    for (body, what) in [
        (
            json!({"name": "x", "template": "edge", "flavor": "small"}),
            "template and parts",
        ),
        (json!({"name": "x", "image": image_id}), "an image alone"),
        (
            json!({"name": "x", "image": image_id, "flavor": "huge", "network": "loopback"}),
            "an unknown flavor",
        ),
        (json!({"name": "x", "region": "mars"}), "an unknown region"),
        (
            json!({"name": "x", "template": "nothing"}),
            "an unknown template",
        ),
    ] {
        let r = c
            .call(&root, "POST", "/v1/appliances", &body.to_string())
            .await;
        problem(&r, 422, "invalid-input", what);
    }

    // Placement: the first region (by priority) with room; then the next; then none.
    let (accepted, done) = c
        .run_task(
            &root,
            "POST",
            "/v1/appliances",
            r#"{"name": "a1", "template": "edge"}"#,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let a1 = accepted["appliance"].clone();
    assert_eq!(
        (&a1["region"], &a1["template"], &a1["flavor"]),
        (&json!("near"), &json!("edge"), &json!("small"))
    );
    let body = json!({"name": "a2", "image": image_name, "flavor": "large", "network": "loopback"});
    let (accepted, _) = c
        .run_task(&root, "POST", "/v1/appliances", &body.to_string())
        .await;
    let a2 = accepted["appliance"].clone();
    assert_eq!(
        (&a2["region"], &a2["template"], &a2["image"]),
        (&json!("far"), &Value::Null, &json!(image_id))
    );
    let r = c
        .call(&root, "POST", "/v1/appliances", r#"{"name": "a3"}"#)
        .await;
    problem(&r, 503, "no-capacity", "every region full");
    let r = c
        .call(
            &root,
            "POST",
            "/v1/appliances",
            r#"{"name": "a3", "region": "near"}"#,
        )
        .await;
    let p = problem(&r, 503, "no-capacity", "the region asked for full");
    assert_eq!(p["detail"], "region near has no room");

    // The flavor's limits hold on the real agent process.
    let id1 = a1["id"].as_str().unwrap();
    c.wait_state(&root, id1, "active", Duration::from_secs(30))
        .await;
    // Billed for at least a second (event times are whole seconds): a minute counted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let agents = c.agents_of(id1);
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(
        limit(agents[0], "Max data size"),
        (512u64 << 20).to_string()
    );
    assert_eq!(limit(agents[0], "Max open files"), "2048");
    assert_eq!(niceness(agents[0]), 5);
    let id2 = &a2["id"].as_str().unwrap().to_string();
    c.wait_state(&root, id2, "active", Duration::from_secs(30))
        .await;
    let large = c.agents_of(id2)[0];
    assert_eq!(niceness(large), 0);
    assert_ne!(limit(large, "Max data size"), (512u64 << 20).to_string());
    // After a stop and a start, the limits are back.
    for action in ["stop", "start"] {
        let body = json!({"action": action}).to_string();
        let (_, done) = c
            .run_task(
                &root,
                "POST",
                &format!("/v1/appliances/{id1}/actions"),
                &body,
            )
            .await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    c.wait_state(&root, id1, "active", Duration::from_secs(30))
        .await;
    let restarted = c.agents_of(id1)[0];
    assert_eq!(limit(restarted, "Max open files"), "2048");

    // A deleted appliance frees its region's place.
    let (_, done) = c
        .run_task(&root, "DELETE", &format!("/v1/appliances/{id1}"), "")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (accepted, _) = c
        .run_task(&root, "POST", "/v1/appliances", r#"{"name": "a3"}"#)
        .await;
    assert_eq!(accepted["appliance"]["region"], "near");
    let id3 = accepted["appliance"]["id"].as_str().unwrap().to_string();
    for id in [id2, &id3] {
        let (_, done) = c
            .run_task(&root, "DELETE", &format!("/v1/appliances/{id}"), "")
            .await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    usage_and_invoices(&c, &root, [id1, id2, &id3]).await;
}

/// The minutes an appliance was billed, from its events as the API shows them: each
/// minute of the clock touched while booting, active, expiring, unhealthy, suspended,
/// stopping or stop_unconfirmed counts once.
async fn billed_minutes(c: &Controller, token: &str, id: &str) -> i64 {
    use time::format_description::well_known::Rfc3339;
    let billed = [
        "booting",
        "active",
        "expiring",
        "unhealthy",
        "suspended",
        "stopping",
        "stop_unconfirmed",
    ];
    let events = c.events(token, id).await;
    let changes: Vec<(i64, bool)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let at = time::OffsetDateTime::parse(e["at"].as_str().unwrap(), &Rfc3339).unwrap();
            let state = e["to_state"].as_str().unwrap();
            (at.unix_timestamp(), billed.contains(&state))
        })
        .collect();
    let mut minutes = std::collections::BTreeSet::new();
    for (i, (start, is_billed)) in changes.iter().enumerate() {
        let Some(end) = changes.get(i + 1).map(|c| c.0) else {
            assert!(!is_billed, "{id} is deleted: its last state is not billed");
            continue;
        };
        if *is_billed && end > *start {
            minutes.extend(start.div_euclid(60)..=(end - 1).div_euclid(60));
        }
    }
    i64::try_from(minutes.len()).unwrap()
}

/// Usage and invoices, for real: the figures the controller reports are the ones the
/// appliances' own events give, in JSON and in CSV.
async fn usage_and_invoices(c: &Controller, root: &str, ids: [&str; 3]) {
    let mut expected = std::collections::BTreeMap::new();
    for id in ids {
        let a = c
            .call(root, "GET", &format!("/v1/appliances/{id}"), "")
            .await
            .json();
        let key = (
            a["template"].as_str().unwrap_or_default().to_string(),
            a["flavor"].as_str().unwrap().to_string(),
            a["region"].as_str().unwrap().to_string(),
        );
        *expected.entry(key).or_insert(0) += billed_minutes(c, root, id).await;
    }
    assert!(expected.values().any(|m| *m >= 1), "{expected:?}");
    let today = time::OffsetDateTime::now_utc().date();
    let query = format!(
        "/v1/usage?team=root&from={}&to={}",
        today.previous_day().unwrap(),
        today.next_day().unwrap()
    );
    let r = c.call(root, "GET", &query, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got: std::collections::BTreeMap<(String, String, String), i64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                (
                    l["template"].as_str().unwrap_or_default().to_string(),
                    l["flavor"].as_str().unwrap().to_string(),
                    l["region"].as_str().unwrap().to_string(),
                ),
                l["appliance_minutes"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    // The same as CSV.
    let csv = csv_call(c, root, &query).await;
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("team_id,team,template,flavor,region,from,to,appliance_minutes")
    );
    let mut from_csv = std::collections::BTreeMap::new();
    for row in rows {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells[1], "root", "{row}");
        from_csv.insert(
            (
                cells[2].to_string(),
                cells[3].to_string(),
                cells[4].to_string(),
            ),
            cells[7].parse::<i64>().unwrap(),
        );
    }
    assert_eq!(from_csv, expected);
    for bad in ["/v1/usage?from=yesterday", "/v1/usage?to=2026-13-01"] {
        let r = c.call(root, "GET", bad, "").await;
        problem(&r, 400, "invalid-input", bad);
    }
    let r = c
        .call(root, "GET", "/v1/usage?from=2026-12-01T00:00:30Z", "")
        .await;
    problem(&r, 422, "invalid-input", "not a whole minute");

    // This month's draft: each template's and flavor's minutes at its price.
    let r = c.call(root, "GET", "/v1/invoices?team=root", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = r.json();
    assert_eq!(page["total"], 1, "{page}");
    let draft = &page["items"][0];
    assert_eq!(
        (&draft["status"], &draft["currency"]),
        (&json!("draft"), &json!("EUR"))
    );
    let minutes_of = |pick: &dyn Fn(&(String, String, String)) -> bool| -> i64 {
        expected
            .iter()
            .filter(|(k, _)| pick(k))
            .map(|(_, m)| m)
            .sum()
    };
    let edge = minutes_of(&|k| k.0 == "edge");
    let small = minutes_of(&|k| k.1 == "small");
    let large = minutes_of(&|k| k.1 == "large");
    let lines: Vec<(String, String, i64, i64, i64)> = draft["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["name"].as_str().unwrap().to_string(),
                l["minutes"].as_i64().unwrap(),
                l["unit_price"].as_i64().unwrap(),
                l["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    let line = |k: &str, n: &str, m: i64, p: i64| (k.to_string(), n.to_string(), m, p, m * p);
    let mut wanted = vec![line("template", "edge", edge, 7)];
    if large > 0 {
        wanted.push(line("flavor", "large", large, 5));
    }
    wanted.push(line("flavor", "small", small, 2));
    assert_eq!(lines, wanted);
    assert_eq!(draft["total"], edge * 7 + large * 5 + small * 2);
    let id = draft["id"].as_str().unwrap();
    let one = c.call(root, "GET", &format!("/v1/invoices/{id}"), "").await;
    assert_eq!(&one.json(), draft);
    let csv = csv_call(c, root, &format!("/v1/invoices/{id}")).await;
    assert_eq!(csv.lines().count(), 1 + wanted.len(), "{csv}");
    assert!(
        csv.starts_with("invoice,month,kind,name,minutes,unit_price,amount,currency\n"),
        "{csv}"
    );
    let r = c
        .call(root, "GET", "/v1/invoices?team=root&limit=0", "")
        .await;
    problem(&r, 422, "invalid-input", "a limit of 0");
    let r = c
        .call(root, "GET", "/v1/invoices/inv-2026-12-nothing", "")
        .await;
    problem(&r, 404, "not-found", "no such invoice");
}

/// A GET answered in CSV.
async fn csv_call(c: &Controller, token: &str, path: &str) -> String {
    let bearer = format!("Bearer {token}");
    let mut conn = c.client().connect(c.admin).await.unwrap();
    let r = conn
        .request(
            "GET",
            path,
            b"",
            &[("authorization", &bearer), ("accept", "text/csv")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
    r.body
}

#[tokio::test]
async fn catalogue_and_placement_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&format!("sqlite://{}/c.db", dir.path().display()), 48).await;
}

#[tokio::test]
async fn catalogue_and_placement_on_postgres() {
    let pg = common::postgres::Postgres::start();
    scenario(&pg.url, 49).await;
}
