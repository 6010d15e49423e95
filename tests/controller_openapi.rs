//! The controller's generated OpenAPI document against the real binary: the document
//! validates (openapi-spec-validator), the admin listener serves it and its
//! documentation page, and a property-based run of schemathesis (`--checks all`, as an
//! admin) finds no server error, no undocumented status code and no answer that breaks
//! its schema. Both tools come from PyPI, installed by this test into a virtualenv under
//! `target/` that later runs reuse.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::controller::Controller;

/// The tools, pinned: a new release must not change what this test means.
const TOOLS: [&str; 2] = ["schemathesis==4.32.5", "openapi-spec-validator==0.9.0"];

/// The virtualenv with the tools, created (once) under the target directory.
fn tools() -> PathBuf {
    common::venv("openapi-venv", &TOOLS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_document_validates_and_the_live_api_keeps_to_it() {
    let venv = tools();
    // At most two appliances: the run may create some (real agents), no more.
    let db = tempfile::tempdir().unwrap();
    let c = Controller::start_with(
        &format!("sqlite://{}/c.db", db.path().display()),
        "127.0.45.1",
        "",
        "max_appliances = 2",
    );
    let password = c.add_user("root", true);
    let token = c.token("root", &password).await;
    let mut conn = c.client().connect(c.admin).await.unwrap();

    // The documentation page at `/`, with its assets, built in.
    let page = conn.request("GET", "/", b"", &[]).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains("swagger-ui"), "{}", page.body);
    let init = conn
        .request("GET", "/swagger-initializer.js", b"", &[])
        .await
        .unwrap();
    assert_eq!(init.status, 200);
    assert!(init.body.contains("/v1/openapi.json"));

    // The document validates.
    let doc = conn
        .request("GET", "/v1/openapi.json", b"", &[])
        .await
        .unwrap();
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["openapi"], "3.1.0");
    let spec = c.dir.path().join("openapi.json");
    std::fs::write(&spec, &doc.body).unwrap();
    let out = Command::new(venv.join("bin/openapi-spec-validator"))
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The live API keeps to it. Schema-valid requests may still be refused with 422 for
    // what a schema cannot say (the configured time-to-live range, the catalogue, the
    // allowed webhook hosts, appliances the caller cannot see) or 503 when the two
    // slots are taken (a designed answer, `no-capacity`, not a server failure);
    // everything else is as documented.
    let config = c.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", \"401\", \"403\", \"404\", \"409\", \"422\", \"503\"]\n\
         [checks.not_a_server_error]\n\
         expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"503\"]\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(venv.join("bin/st"))
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&spec)
        .args(["--url", &format!("https://localhost:{}", c.admin.port())])
        .arg("--tls-verify")
        .arg(c.ca_cert())
        .args(["--checks", "all"])
        // The appliance zone's operations are not served on admin listeners; logging
        // out would end the run's own token.
        .args(["--exclude-path", "/v1/events"])
        .args(["--exclude-path-regex", "^/v1/enrolment-requests"])
        .args(["--exclude-operation-id", "delete_token"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "10", "--seed", "1", "--workers", "2"])
        .args(["--request-timeout", "20"])
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        .current_dir(c.dir.path())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\ncontroller log:\n{}",
        c.log_text()
    );
    // It ran: every operation of the admin listeners, with generated cases.
    let summary = report
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{summary}");
    assert!(summary.contains("Tested: 66"), "{report}");
    assert!(summary.contains(" generated"), "{report}");
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "the run must stay short: {:?}",
        started.elapsed()
    );
    // No request made the controller fail.
    assert!(!c.log_text().contains("internal error"), "{}", c.log_text());
}
