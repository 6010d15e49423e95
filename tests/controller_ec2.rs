//! The `ec2` backend, black-box, with the real binaries against `moto` in server mode
//! (an EC2-compatible endpoint from PyPI, started here), on SQLite and PostgreSQL. Moto
//! boots no guest, so the test plays the guest: it reads the instance's user data
//! (with boto3, AWS's own client) and runs the enrolment command it holds; the
//! appliance then goes active through the path a real instance takes. Stop and start
//! act on the instance, destroy terminates it and deletes the key pair it was given,
//! and cloud errors (an unknown image, bad credentials) fail the create with the cloud's
//! message, leaving nothing behind. Moto checks every request's Signature Version 4
//! with botocore's own signer, for an IAM user the test makes.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::controller::Controller;
use common::machine::Machine;
use common::{free_port, postgres};
use serde_json::{Value, json};

const MOTO: &str = "moto[server]==5.2.5";

/// A moto server on a loopback port, validating images and instance types as EC2 does
/// and authenticating every request but the first three (which make the IAM user whose
/// keys the rest use).
struct Moto {
    child: Child,
    port: u16,
    python: std::path::PathBuf,
    /// The IAM user's access key id and secret.
    keys: (String, String),
    _dir: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        let venv = common::venv("moto-venv", &[MOTO]);
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("moto_server runs");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start: {}",
                std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut moto = Moto {
            child,
            port,
            python: venv.join("bin/python"),
            keys: ("unused".into(), "unused".into()),
            _dir: dir,
        };
        let user = moto.ask("iam", "");
        moto.keys = (
            user["key"].as_str().unwrap().to_string(),
            user["secret"].as_str().unwrap().to_string(),
        );
        moto
    }

    /// A credentials file (AWS's format) with these keys.
    fn credentials(&self, path: &std::path::Path, (key, secret): (&str, &str)) {
        std::fs::write(
            path,
            format!("[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"),
        )
        .unwrap();
    }

    /// Asks the cloud with boto3 (not the controller's client): `what` is one of the
    /// script's questions; its JSON answer.
    fn ask(&self, what: &str, arg: &str) -> Value {
        let out = Command::new(&self.python)
            .args(["-c", BOTO, what, arg])
            .env("ENDPOINT", format!("http://127.0.0.1:{}", self.port))
            .env("KEY", &self.keys.0)
            .env("SECRET", &self.keys.1)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boto3 {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test asks the cloud, with boto3.
const BOTO: &str = r#"
import base64, json, os, sys
import boto3
def client(service):
    return boto3.client(service, endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                        aws_access_key_id=os.environ["KEY"], aws_secret_access_key=os.environ["SECRET"])
what, arg = sys.argv[1], sys.argv[2]
if what == "iam":
    # The first three requests are not authenticated: they make the user.
    iam = client("iam")
    iam.create_user(UserName="applianced")
    iam.put_user_policy(UserName="applianced", PolicyName="ec2", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="applianced")["AccessKey"]
    print(json.dumps({"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
    sys.exit(0)
ec2 = client("ec2")
if what == "setup":
    image = sorted(i["ImageId"] for i in ec2.describe_images(Owners=["amazon"])["Images"])[0]
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    print(json.dumps({"image": image, "subnet": subnet}))
elif what == "instances":
    found = []
    for r in ec2.describe_instances(Filters=[{"Name": "tag:applianced:appliance", "Values": [arg]}])["Reservations"]:
        for i in r["Instances"]:
            data = ec2.describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")
            value = data.get("UserData", {}).get("Value")
            found.append({
                "id": i["InstanceId"], "state": i["State"]["Name"], "type": i["InstanceType"],
                "image": i["ImageId"], "subnet": i.get("SubnetId"), "key_name": i.get("KeyName"),
                "tags": {t["Key"]: t["Value"] for t in i.get("Tags", [])},
                "user_data": base64.b64decode(value).decode() if value else None,
            })
    print(json.dumps(found))
elif what == "keypairs":
    print(json.dumps([k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]))
"#;

/// The agent command of a user data script: the one it runs without systemd (its
/// `exec` taken off), which must be the one its systemd unit runs.
fn agent_command(user_data: &str) -> String {
    let line = user_data
        .lines()
        .find(|l| l.starts_with("exec applianced agent --enrol "))
        .unwrap_or_else(|| panic!("no enrolment command in:\n{user_data}"));
    let command = line.trim_start_matches("exec ").to_string();
    assert!(
        user_data
            .lines()
            .any(|l| l == format!("ExecStart=/usr/bin/env {command}")),
        "the unit runs another command:\n{user_data}"
    );
    command
}

/// The enrolment tokens issued for an appliance's machine, as an admin lists them.
async fn tokens_of(c: &Controller, root: &str, appliance: &str) -> Vec<Value> {
    let tokens = c.call(root, "GET", "/v1/enrolment-tokens", "").await.json();
    tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["appliance_id"] == appliance)
        .cloned()
        .collect()
}

async fn only_instance(moto: &Moto, appliance: &str) -> Value {
    let found = moto.ask("instances", appliance);
    let all = found.as_array().unwrap();
    assert_eq!(all.len(), 1, "{found}");
    all[0].clone()
}

/// Waits until the appliance's instance is in `state`.
async fn wait_instance(moto: &Moto, appliance: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = only_instance(moto, appliance).await;
        if i["state"] == state {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "instance is {}, not {state}",
            i["state"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs an action on an appliance; it must succeed.
async fn act(c: &Controller, token: &str, id: &str, action: &str) {
    let (_, done) = c
        .run_task(
            token,
            "POST",
            &format!("/v1/appliances/{id}/actions"),
            &json!({ "action": action }).to_string(),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{action}: {done}");
}

async fn scenario(db_url: &str, net: u8) {
    let moto = Moto::start();
    let setup = moto.ask("setup", "");
    let (image, subnet) = (
        setup["image"].as_str().unwrap(),
        setup["subnet"].as_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("aws-credentials");
    moto.credentials(&credentials, (&moto.keys.0, &moto.keys.1));
    // The same key with another secret: the signature does not match.
    let wrong = dir.path().join("wrong-credentials");
    moto.credentials(&wrong, (&moto.keys.0, "not-the-secret"));
    let backends = format!(
        "[[backends]]\nname = \"cloud\"\nkind = \"ec2\"\nendpoint = \"http://127.0.0.1:{port}/\"\n\
         region = \"us-east-1\"\nimage = \"{image}\"\nimages = [\"ami-0badc0de\"]\n\
         instance_type = \"t2.micro\"\nsubnet = \"{subnet}\"\n\
         credentials_file = \"{creds}\"\nagent_install = \"echo installing the agent\"\n\
         controller_url = \"https://@APPLIANCE_ZONE@\"\n\
         [[backends]]\nname = \"forged\"\nkind = \"ec2\"\nendpoint = \"http://127.0.0.1:{port}/\"\n\
         region = \"us-east-1\"\nimage = \"{image}\"\ninstance_type = \"t2.micro\"\n\
         credentials_file = \"{wrong}\"\ncontroller_url = \"https://@APPLIANCE_ZONE@\"\n",
        port = moto.port,
        creds = credentials.display(),
        wrong = wrong.display(),
    );
    let mut c = Controller::start_on(
        db_url,
        "127.0.0.1",
        "",
        &format!("[appliances]\nheartbeat_interval = \"1s\"\n{backends}"),
    );
    let password = c.add_user("root", true);
    let root = c.token("root", &password).await;
    let tenant_password = c.add_user("tenant", false);
    let tenant = c.token("tenant", &tenant_password).await;
    let r = c
        .call(
            &tenant,
            "POST",
            "/v1/keypairs",
            r#"{"name": "ops", "team": "tenant"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let keypair = r.json();

    // The catalogue is the cloud's description of the configured image, instance type
    // and subnet.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .call(&tenant, "GET", &format!("/v1/images/{image}"), "")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if !r.body.contains("not yet described") {
            assert_ne!(r.json()["name"], image, "the image's own name: {}", r.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never described: {}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.call(&tenant, "GET", "/v1/flavors/t2.micro", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["description"].as_str().unwrap().contains("1 vCPU"),
        "{}",
        r.body
    );
    let r = c
        .call(&tenant, "GET", &format!("/v1/networks/{subnet}"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let described = r.json()["description"].as_str().unwrap().to_string();
    assert!(
        described.contains('/') && described.contains(" in "),
        "the subnet's CIDR and zone: {}",
        r.body
    );

    // What each backend can do.
    let r = c.call(&tenant, "GET", "/v1/backends", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let caps = json!({"create": true, "power": true, "suspend": false, "regions": false,
                      "enrols": true});
    assert_eq!(
        r.json(),
        json!([
            {"name": "cloud", "kind": "ec2", "capabilities": caps},
            {"name": "forged", "kind": "ec2", "capabilities": caps},
            {"name": "enrolled", "kind": "enrolled", "capabilities": {"create": false,
             "power": false, "suspend": false, "regions": false, "enrols": false}},
        ])
    );

    // Create: an instance tagged with the appliance, its key pair imported, its user
    // data the enrolment command with a token for it alone.
    let (accepted, done) = c
        .run_task(
            &tenant,
            "POST",
            "/v1/appliances",
            r#"{"name": "vm-1", "backend": "cloud", "keypair": "ops"}"#,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}\n{}", c.log_text());
    let id = accepted["appliance_id"].as_str().unwrap().to_string();
    let a = c
        .wait_state(&tenant, &id, "booting", Duration::from_secs(10))
        .await;
    assert_eq!(a["backend"], "cloud", "{a}");
    assert!(a["address"].is_null(), "no address before it enrols: {a}");
    let instance = only_instance(&moto, &id).await;
    assert_eq!(instance["state"], "running", "{instance}");
    assert_eq!(instance["type"], "t2.micro");
    assert_eq!(instance["image"], image);
    assert_eq!(instance["subnet"], subnet);
    assert_eq!(instance["tags"]["Name"], "vm-1");
    let key_name = format!("applianced-{id}");
    assert_eq!(instance["key_name"], key_name.as_str());
    assert!(
        moto.ask("keypairs", "")
            .as_array()
            .unwrap()
            .contains(&json!(key_name))
    );
    let user_data = instance["user_data"].as_str().unwrap();
    assert!(user_data.starts_with("#!/bin/sh\n"), "{user_data}");
    assert!(
        user_data.contains("\necho installing the agent\n"),
        "{user_data}"
    );
    assert!(!user_data.contains("PRIVATE KEY"), "{user_data}");
    assert!(!user_data.contains(keypair["private_key"].as_str().unwrap().trim()));
    let command = agent_command(user_data);
    assert!(
        command.starts_with(&format!(
            "applianced agent --enrol https://{} --token ",
            c.appliance_zone
        )),
        "{command}"
    );
    assert!(command.ends_with(" --listen 0.0.0.0:443"), "{command}");
    assert!(
        user_data.contains("\nexec systemctl enable --now applianced-appliance.service\n"),
        "{user_data}"
    );
    let token = command
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap()
        .to_string();
    let mine = tokens_of(&c, &root, &id).await;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert!(mine[0]["used_at"].is_null());

    // The guest boots: it runs its user data's command, enrols with the appliance's
    // token, and its agent reports launched.
    let mut guest = Machine::new(net, 1);
    guest.boot(&command);
    let a = c
        .wait_state(&tenant, &id, "active", Duration::from_secs(30))
        .await;
    assert_eq!(a["address"], guest.listen.ip().to_string(), "{a}");
    assert_eq!(a["agent_url"], format!("https://{}/", guest.listen), "{a}");
    let config = std::fs::read_to_string(guest.state().join("agent.toml")).unwrap();
    assert!(
        config.contains(&format!("appliance_id = \"{id}\"")),
        "{config}"
    );
    let r = c
        .call(&tenant, "POST", &format!("/v1/appliances/{id}/ping"), "")
        .await;
    assert_eq!(
        r.json()["reachable"],
        true,
        "{}\n{}",
        r.body,
        guest.log_text()
    );
    let events = c.events(&tenant, &id).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "enrolled"),
        "{events}"
    );
    // The token is spent: the same command enrols nothing else.
    let mut copycat = Machine::new(net, 2);
    copycat.boot(&command);
    assert_eq!(copycat.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(
        copycat.log_text().contains("used already"),
        "{}",
        copycat.log_text()
    );

    // A controller that dies and comes back finds its instance where it left it.
    c.restart();
    let r = c
        .call(&tenant, "POST", &format!("/v1/appliances/{id}/ping"), "")
        .await;
    assert_eq!(r.json()["reachable"], true, "after a restart: {}", r.body);

    // What EC2 cannot do is refused before anything is tried.
    let r = c
        .call(
            &tenant,
            "POST",
            &format!("/v1/appliances/{id}/actions"),
            r#"{"action": "suspend"}"#,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        r.json()["type"],
        "urn:applianced:problem:not-supported-by-backend"
    );

    // Stop and start act on the instance; the guest powers off and on with it.
    act(&c, &tenant, &id, "stop").await;
    wait_instance(&moto, &id, "stopped").await;
    guest.kill();
    c.wait_state(&tenant, &id, "stopped", Duration::from_secs(10))
        .await;
    act(&c, &tenant, &id, "start").await;
    wait_instance(&moto, &id, "running").await;
    // Its boot runs the same command, which now serves.
    guest.boot(&command);
    c.wait_state(&tenant, &id, "active", Duration::from_secs(30))
        .await;

    // Destroy terminates the instance and deletes its key pair and token.
    let (_, done) = c
        .run_task(&tenant, "DELETE", &format!("/v1/appliances/{id}"), "")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(moto.ask("instances", &id).as_array().unwrap().len(), 1);
    wait_instance(&moto, &id, "terminated").await;
    assert!(
        !moto
            .ask("keypairs", "")
            .as_array()
            .unwrap()
            .contains(&json!(key_name))
    );
    assert!(tokens_of(&c, &root, &id).await.is_empty());
    guest.kill();

    // A cloud error: an image the cloud does not have. The create fails with the
    // cloud's message as a 502 problem; nothing is left (no instance, no key pair, no
    // token).
    let body = json!({"name": "vm-2", "backend": "cloud", "image": "ami-0badc0de",
                      "flavor": "t2.micro", "network": subnet, "keypair": "ops"});
    let (accepted, done) = c
        .run_task(&tenant, "POST", "/v1/appliances", &body.to_string())
        .await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["problem"]["status"], 502, "{done}");
    let detail = done["problem"]["detail"].as_str().unwrap();
    assert!(detail.contains("InvalidAMIID"), "{detail}");
    let failed = accepted["appliance_id"].as_str().unwrap();
    assert!(moto.ask("instances", failed).as_array().unwrap().is_empty());
    let names = moto.ask("keypairs", "");
    assert!(
        !names
            .as_array()
            .unwrap()
            .contains(&json!(format!("applianced-{failed}"))),
        "{names}"
    );
    assert!(tokens_of(&c, &root, failed).await.is_empty());
    assert_eq!(
        c.call(&tenant, "GET", &format!("/v1/appliances/{failed}"), "")
            .await
            .json()["state"],
        "failed"
    );

    // Bad credentials: the cloud's refusal, as a 502 problem.
    let (_, done) = c
        .run_task(
            &tenant,
            "POST",
            "/v1/appliances",
            r#"{"name": "vm-3", "backend": "forged"}"#,
        )
        .await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["problem"]["status"], 502, "{done}");
    let detail = done["problem"]["detail"].as_str().unwrap();
    assert!(detail.contains("AuthFailure"), "{detail}");
    assert!(
        c.log_text().contains("cannot describe the ec2 catalogue"),
        "{}",
        c.log_text()
    );

    // Neither the cloud's secret nor the machine's token was written anywhere the
    // controller writes: its log, the events, the tasks.
    let log = c.log_text();
    let secret = moto.keys.1.as_str();
    assert!(!log.contains(secret), "the secret is in the log");
    assert!(!log.contains(&token), "the token is in the log");
    let events = c.events(&root, &id).await.to_string();
    assert!(!events.contains(&token) && !events.contains(secret));
    let tasks = c.call(&root, "GET", "/v1/tasks", "").await.body;
    assert!(!tasks.contains(&token) && !tasks.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_appliances_join_by_themselves_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    scenario(&url, 61).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_appliances_join_by_themselves_on_postgres() {
    let pg = postgres::Postgres::start();
    scenario(&pg.url, 62).await;
}
