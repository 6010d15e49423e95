//! The fleet's rules against fakes: a backend that only records, agents and webhook
//! receivers that answer as told, and a clock the test moves. Hours of appliance life
//! (expiry, its warning, watchdogs, leases, retries, webhook backoff) in milliseconds.

use std::sync::atomic::{AtomicI64, Ordering};

use super::fakes::{FakeBackend, FakeClock, FakeMailer, Script};
use super::ports::*;
use super::*;
use crate::callback::{Callback, CallbackEvent};
use crate::controller::fleet::operations::{
    ActionOutcome, AgentMethod, AgentRequest, CreateRequest, ListFilter,
};
use crate::controller::fleet::teams::Principal;
use crate::controller::store::Role;

/// A create request for `name` with the defaults.
fn request(name: &str) -> CreateRequest {
    CreateRequest {
        team: None,
        name: name.into(),
        ttl_minutes: None,
        external_id: None,
        callback_url: None,
        template: None,
        keypair: None,
        image: None,
        flavor: None,
        network: None,
        region: None,
        notify_email: None,
        cluster: None,
        backend: None,
    }
}

struct Setup {
    fleet: Arc<Fleet>,
    backend: Arc<FakeBackend>,
    agents: Arc<Script>,
    hooks: Arc<Script>,
    clock: Arc<FakeClock>,
    start: i64,
    user: Principal,
    mails: Arc<FakeMailer>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{d}\"\n[database]\nurl = \"sqlite://{d}/c.db\"\n\
             [[listeners]]\naddress = \"127.0.0.1:1\"\nzone = \"admin\"\n\
             [backend]\ncontroller_url = \"https://127.0.0.1:1\"\n\
             [appliances]\nttl_min_minutes = 1\nlaunch_timeout = \"10m\"\n\
             heartbeat_interval = \"30s\"\nmissed_heartbeats = 3\nstop_timeout = \"60s\"\n\
             [tasks]\nagent_attempts = 2\n[webhooks]\nmax_attempts = 3\n\
             [prices]\ncurrency = \"EUR\"\ntemplates = {{ process = 3 }}\nflavors = {{ flavor = 1 }}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let config = ControllerConfig::load(&path).unwrap();
    let store = Arc::new(Store::open(&config.database.url, 4).await.unwrap());
    let ca = Arc::new(ControllerCa::open(&dir.path().join("ca"), 30, 14).unwrap());
    let (backend, agents, hooks) = (
        Arc::new(FakeBackend::default()),
        Arc::new(Script::default()),
        Arc::new(Script::default()),
    );
    // Now: the CA's certificates are valid from now, and not due for rotation.
    let start = crate::certs::now_unix();
    let clock = Arc::new(FakeClock(AtomicI64::new(start)));
    let mails = Arc::new(FakeMailer::default());
    let fleet = Arc::new(Fleet::new(
        Parts {
            store: store.clone(),
            ca,
            backends: vec![("process".into(), backend.clone())],
            agents: Box::new(agents.clone()),
            hooks: Box::new(hooks.clone()),
            clock: clock.clone(),
            on_revoke: Box::new(|| {}),
            mailer: Some(Box::new(mails.clone())),
        },
        config,
        b"secret".to_vec(),
    ));
    let user = store.add_user("alice", Role::Member, start).await;
    let user = fleet.principal(&user).await.unwrap();
    Setup {
        fleet,
        backend,
        agents,
        hooks,
        clock,
        start,
        user,
        mails,
        _dir: dir,
    }
}

impl Setup {
    /// Claims and runs every queued task, as a worker would.
    async fn run_tasks(&self) -> usize {
        self.fleet.run_queued_tasks(self.clock.now()).await
    }

    async fn create(&self, name: &str, callback_url: Option<&str>) -> String {
        let q = self
            .fleet
            .create(
                &self.user,
                CreateRequest {
                    ttl_minutes: Some(30),
                    callback_url: callback_url.map(String::from),
                    ..request(name)
                },
            )
            .await
            .unwrap();
        assert_eq!(self.run_tasks().await, 1);
        q.appliance.unwrap().id
    }

    /// Creates an appliance whose create task fails, runs it: the task's problem.
    async fn failed_create(&self) -> Value {
        let q = self.fleet.create(&self.user, request("lb")).await.unwrap();
        assert_eq!(self.run_tasks().await, 1);
        let id = ids::TaskId::from(q.task.id.clone());
        let task = self.fleet.task(&self.user, &id).await.unwrap();
        assert_eq!(task.state, TaskState::Failed, "{task:?}");
        serde_json::from_str(task.problem.as_deref().unwrap()).unwrap()
    }

    async fn report(&self, id: &str, event: CallbackEvent) -> State {
        let cb = Callback {
            event,
            appliance_id: None,
            status: None,
        };
        self.fleet.callback(id, cb).await.unwrap().state
    }

    async fn state(&self, id: &str) -> State {
        self.fleet.appliance(id).await.unwrap().state
    }

    async fn events(&self, id: &str) -> Vec<(String, Option<String>)> {
        self.fleet
            .store
            .events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|(e, _)| (e.kind, e.actor))
            .collect()
    }
}

#[tokio::test]
async fn expiry_its_warning_and_the_stop_run_on_the_clock() {
    let s = setup().await;
    let id = s.create("lb", None).await;
    assert_eq!(s.state(&id).await, State::Booting);
    assert_eq!(s.backend.calls(), [format!("create {id}")]);
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
    let a = s.fleet.appliance(&id).await.unwrap();
    assert_eq!(
        a.expires_at,
        Some(s.start + 30 * 60),
        "the clock starts at launched"
    );
    // Heartbeats keep the watchdog quiet while the clock runs to 5 minutes before.
    for _ in 0..49 {
        s.clock.advance(30);
        s.report(&id, CallbackEvent::Heartbeat).await;
        s.fleet.timers_once().await.unwrap();
    }
    assert_eq!(s.state(&id).await, State::Active, "24.5 minutes in");
    s.clock.advance(30);
    s.fleet.timers_once().await.unwrap();
    assert_eq!(s.state(&id).await, State::Expiring, "5 minutes before");
    s.clock.advance(300);
    s.report(&id, CallbackEvent::Heartbeat).await;
    s.fleet.timers_once().await.unwrap();
    assert_eq!(s.state(&id).await, State::Stopping, "expired");
    assert_eq!(s.run_tasks().await, 1, "the stop task");
    assert_eq!(s.state(&id).await, State::Stopped);
    assert!(s.backend.calls().contains(&format!("stop {id}")));
    let kinds: Vec<String> = s.events(&id).await.into_iter().map(|e| e.0).collect();
    for k in ["launched", "expiring", "expired", "stopped"] {
        assert!(kinds.iter().any(|e| e == k), "{k} in {kinds:?}");
    }
    // Timers act for nobody: no actor on what they caused.
    for (kind, actor) in s.events(&id).await {
        if matches!(kind.as_str(), "expiring" | "expired" | "launched") {
            assert_eq!(actor, None, "{kind}");
        }
        if matches!(kind.as_str(), "requested" | "provisioning" | "spawned") {
            assert_eq!(actor.as_deref(), Some("alice"), "{kind}");
        }
    }
}

#[tokio::test]
async fn watchdogs_launch_timeout_missed_heartbeats_and_recovery() {
    let s = setup().await;
    let silent = s.create("silent", None).await;
    let live = s.create("live", None).await;
    s.report(&live, CallbackEvent::Launched).await;
    s.clock.advance(599);
    s.fleet.timers_once().await.unwrap();
    assert_eq!(
        s.state(&silent).await,
        State::Booting,
        "before launch_timeout"
    );
    s.clock.advance(1);
    s.fleet.timers_once().await.unwrap();
    assert_eq!(s.state(&silent).await, State::LaunchTimeout);
    // `live` missed 3 heartbeats of 30 s by now: unhealthy, until the next one.
    assert_eq!(s.state(&live).await, State::Unhealthy);
    assert_eq!(
        s.report(&live, CallbackEvent::Heartbeat).await,
        State::Active
    );
    s.clock.advance(89);
    s.fleet.timers_once().await.unwrap();
    assert_eq!(
        s.state(&live).await,
        State::Active,
        "two heartbeats missed is fine"
    );
}

#[tokio::test]
async fn agent_calls_retry_what_was_not_sent_and_fail_as_bad_gateway() {
    let s = setup().await;
    let id = s.create("lb", None).await;
    s.report(&id, CallbackEvent::Launched).await;
    let a = s.fleet.appliance(&id).await.unwrap();
    // Not sent, then answered: retried once (agent_attempts = 2).
    s.agents
        .answers
        .lock()
        .unwrap()
        .extend([Err(CallError::NotSent("refused".into())), Ok(200)]);
    let answer = s.fleet.ping(&a, Check::Ping).await.unwrap();
    assert_eq!(answer["reachable"], true);
    assert_eq!(s.agents.seen.lock().unwrap().len(), 2);
    // Broken twice: a 502 problem after the attempts.
    s.agents.answers.lock().unwrap().extend([
        Err(CallError::Broken("timeout".into())),
        Err(CallError::Broken("timeout".into())),
    ]);
    let e = s.fleet.ping(&a, Check::Ping).await.unwrap_err();
    assert_eq!(e.status_and_kind(), (502, "bad-gateway"), "{e}");
    // A POST that may have been done is not sent twice.
    s.agents.seen.lock().unwrap().clear();
    s.agents
        .answers
        .lock()
        .unwrap()
        .push_back(Err(CallError::Broken("reset".into())));
    let e = s
        .fleet
        .call_agent(&a, Verb::Post, "/x", Vec::new(), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e.status_and_kind().0, 502);
    assert_eq!(s.agents.seen.lock().unwrap().len(), 1);
    assert_eq!(
        s.agents.seen.lock().unwrap()[0].url,
        format!("https://127.0.46.1:{}/x", a.agent_port.unwrap())
    );
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_with_backoff() {
    let s = setup().await;
    // `requested`, `provisioning` and `spawned` are delivered together; the receiver
    // fails the first two rounds.
    s.hooks
        .answers
        .lock()
        .unwrap()
        .extend([Ok(500), Ok(503), Ok(500), Ok(500), Ok(503), Ok(500)]);
    let id = s.create("hooked", Some("https://hooks.example/in")).await;
    let sent = || s.hooks.seen.lock().unwrap().len();
    s.fleet.webhooks_once().await;
    assert_eq!(sent(), 3);
    let first = s.hooks.seen.lock().unwrap()[0].clone();
    assert_eq!(first.url, "https://hooks.example/in");
    let header = |name: &str| {
        first
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let ts: i64 = header("x-applianced-timestamp").parse().unwrap();
    assert_eq!(ts, s.start);
    assert_eq!(
        header("x-applianced-signature"),
        Fleet::signature(b"secret", ts, &first.body)
    );
    s.fleet.webhooks_once().await;
    assert_eq!(sent(), 3, "not due again yet");
    s.clock.advance(2);
    s.fleet.webhooks_once().await;
    assert_eq!(sent(), 6, "retried after 2 s");
    s.clock.advance(3);
    s.fleet.webhooks_once().await;
    assert_eq!(sent(), 6, "the next wait is 4 s");
    s.clock.advance(1);
    s.fleet.webhooks_once().await;
    assert_eq!(sent(), 9, "retried after 4 s, and delivered");
    for (event, deliveries) in s.fleet.store.events(&id).await.unwrap() {
        assert_eq!(deliveries.len(), 1, "{}", event.kind);
        assert_eq!(
            deliveries[0].state,
            DeliveryState::Delivered,
            "{}",
            event.kind
        );
        assert_eq!(deliveries[0].attempts, 3, "{}", event.kind);
    }
    s.clock.advance(600);
    s.fleet.webhooks_once().await;
    assert_eq!(sent(), 9, "delivered once");
}

#[tokio::test]
async fn an_interrupted_task_is_resumed_and_a_dead_lease_expires() {
    let s = setup().await;
    let q = s.fleet.create(&s.user, request("lb")).await.unwrap();
    // Another controller claimed it and died.
    let now = s.clock.now();
    let claimed = s
        .fleet
        .store
        .claim_task("elsewhere/1/x", now, now + LEASE_SECS)
        .await
        .unwrap();
    assert!(claimed.is_some());
    assert_eq!(s.run_tasks().await, 0, "leased by the other controller");
    s.clock.advance(LEASE_SECS + 1);
    assert_eq!(s.run_tasks().await, 1, "its lease expired: taken over");
    let task = s
        .fleet
        .task(&s.user, &ids::TaskId::from(q.task.id.clone()))
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    assert_eq!(task.attempts, 2);
}

#[tokio::test]
async fn a_disk_failure_is_internal_and_a_backend_failure_a_bad_gateway() {
    let s = setup().await;
    s.backend.disk_full.store(true, Ordering::SeqCst);
    let problem = s.failed_create().await;
    assert_eq!(problem["status"], 500, "{problem}");
    assert_eq!(problem["type"], "urn:applianced:problem:internal");
    assert_eq!(problem["detail"], "internal error", "no internals shown");
    s.backend.disk_full.store(false, Ordering::SeqCst);
    s.backend.refuse_start.store(true, Ordering::SeqCst);
    let problem = s.failed_create().await;
    assert_eq!(problem["status"], 502, "{problem}");
    assert_eq!(problem["type"], "urn:applianced:problem:bad-gateway");
}

#[tokio::test]
async fn a_start_the_backend_refuses_fails_the_appliance_at_once() {
    let s = setup().await;
    let id = s.create("lb", None).await;
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
    let machine = ids::ApplianceId::from(id.clone());
    s.fleet.act(&s.user, &machine, "stop", None).await.unwrap();
    assert_eq!(s.run_tasks().await, 1);
    assert_eq!(s.state(&id).await, State::Stopped);
    s.backend.refuse_start.store(true, Ordering::SeqCst);
    s.fleet.act(&s.user, &machine, "start", None).await.unwrap();
    assert_eq!(s.state(&id).await, State::Booting);
    assert_eq!(s.run_tasks().await, 1);
    assert_eq!(s.state(&id).await, State::Failed, "not left booting");
    let events = s.fleet.store.events(&id).await.unwrap();
    let (failed, _) = events.last().unwrap();
    assert_eq!(
        (failed.kind.as_str(), failed.from_state.as_deref()),
        ("failed", Some("booting"))
    );
    let detail: Value = serde_json::from_str(failed.detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["problem"]["status"], 502, "{detail}");
    assert_eq!(detail["problem"]["detail"], "backend: cannot start");
    // A failed appliance can be started again once the backend can.
    s.backend.refuse_start.store(false, Ordering::SeqCst);
    s.fleet.act(&s.user, &machine, "start", None).await.unwrap();
    assert_eq!(s.run_tasks().await, 1);
    assert_eq!(s.state(&id).await, State::Booting);
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
}

#[tokio::test]
async fn what_the_backend_cannot_do_is_refused_before_anything_is_queued() {
    let s = setup().await;
    let id = s.create("lb", None).await;
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
    let machine = ids::ApplianceId::from(id.clone());
    s.backend.capabilities.lock().unwrap().suspend = false;
    let refused = async |action: &str| {
        s.fleet
            .act(&s.user, &machine, action, None)
            .await
            .err()
            .unwrap()
    };
    for action in ["suspend", "resume"] {
        let e = refused(action).await;
        assert_eq!(e.status_and_kind(), (409, "not-supported-by-backend"));
        assert_eq!(
            e.to_string(),
            format!("the process backend cannot {action} appliances")
        );
    }
    assert_eq!(s.run_tasks().await, 0, "nothing queued");
    assert_eq!(s.state(&id).await, State::Active);
    assert_eq!(s.backend.calls(), [format!("create {id}")], "nothing asked");
    // What it can do still runs.
    s.fleet.act(&s.user, &machine, "stop", None).await.unwrap();
    assert_eq!(s.run_tasks().await, 1);
    assert_eq!(s.state(&id).await, State::Stopped);
    assert_eq!(s.backend.get(&machine).unwrap(), MachineState::Stopped);
    // A backend that cannot create refuses creates.
    s.backend.capabilities.lock().unwrap().create = false;
    let e = s.fleet.create(&s.user, request("lb2")).await.err().unwrap();
    assert_eq!(e.status_and_kind(), (409, "not-supported-by-backend"));
    assert_eq!(s.run_tasks().await, 0);
    // An appliance of a backend no longer configured is refused every action, its
    // machine never touched (not even destroyed, which would free its address).
    sqlx::query("UPDATE appliances SET backend = 'gone' WHERE id = $1")
        .bind(&id)
        .execute(&s.fleet.store.pool)
        .await
        .unwrap();
    for action in ["start", "destroy"] {
        let e = refused(action).await;
        assert_eq!(
            e.status_and_kind(),
            (409, "not-supported-by-backend"),
            "{action}"
        );
        assert!(
            e.to_string().contains("\"gone\", which is not configured"),
            "{e}"
        );
    }
    assert_eq!(s.run_tasks().await, 0);
    assert_eq!(s.backend.get(&machine).unwrap(), MachineState::Stopped);
}

/// A certificate signing request for a new P-256 key.
fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

#[tokio::test]
async fn a_machine_that_enrols_joins_as_its_appliance_with_its_own_token() {
    use crate::controller::fleet::enrolments::EnrolmentRequest;
    let s = setup().await;
    s.backend.capabilities.lock().unwrap().enrols = true;
    let id = s.create("vm", None).await;
    assert_eq!(s.state(&id).await, State::Booting);
    let a = s.fleet.appliance(&id).await.unwrap();
    assert_eq!(
        (a.slot, a.address.clone(), a.cert_serial.clone()),
        (None, None, None)
    );
    // The machine's command: a token for this appliance alone.
    let command = s.backend.enrol_command.lock().unwrap().clone().unwrap();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(
        &words[..4],
        ["applianced", "agent", "--enrol", "https://127.0.0.1:1"]
    );
    let token = words[words.iter().position(|w| *w == "--token").unwrap() + 1].to_string();
    let tokens = s.fleet.store.enrolment_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].appliance_id.as_deref(), Some(id.as_str()));
    assert!(tokens[0].auto_accept);
    // The machine enrols: accepted at once, completing its appliance (no new one).
    let csr = csr();
    let join = |token: String| EnrolmentRequest {
        token,
        csr: csr.clone(),
        address: None,
        port: 443,
        name: None,
    };
    let peer: IpAddr = "127.0.46.9".parse().unwrap();
    let e = s
        .fleet
        .submit_enrolment(peer, join(token.clone()))
        .await
        .unwrap();
    assert_eq!(
        e.state,
        crate::controller::enrolments::EnrolmentState::Accepted
    );
    assert_eq!(e.appliance_id.as_deref(), Some(id.as_str()));
    let a = s.fleet.appliance(&id).await.unwrap();
    assert_eq!(a.address.as_deref(), Some("127.0.46.9"));
    assert_eq!(a.agent_port, Some(443));
    assert!(a.cert_serial.is_some() && a.public_key.is_some());
    assert_eq!(a.state, State::Booting, "active once its agent reports");
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
    assert!(
        s.events(&id)
            .await
            .iter()
            .any(|(kind, _)| kind == "enrolled")
    );
    let again = s
        .fleet
        .submit_enrolment(peer, join(token))
        .await
        .err()
        .unwrap();
    assert_eq!(again.status_and_kind(), (401, "enrolment-refused"));
    assert_eq!(s.fleet.store.appliances(false).await.unwrap().len(), 1);

    // A create the cloud has no room for: 503, and what it made is removed.
    s.backend.no_capacity.store(true, Ordering::SeqCst);
    let problem = s.failed_create().await;
    assert_eq!(problem["status"], 503, "{problem}");
    assert_eq!(problem["type"], "urn:applianced:problem:no-capacity");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("InsufficientInstanceCapacity"),
        "{problem}"
    );
    let calls = s.backend.calls();
    let failed = calls
        .last()
        .unwrap()
        .strip_prefix("delete ")
        .unwrap()
        .to_string();
    assert_ne!(failed, id);
    assert!(calls.contains(&format!("create {failed}")), "{calls:?}");
    let tokens = s.fleet.store.enrolment_tokens().await.unwrap();
    assert!(
        tokens
            .iter()
            .all(|t| t.appliance_id.as_deref() != Some(failed.as_str()))
    );
    assert_eq!(s.state(&failed).await, State::Failed);
}

#[tokio::test]
async fn an_auto_accepted_request_over_quota_waits_for_an_admin() {
    use crate::controller::enrolments::EnrolmentState;
    use crate::controller::fleet::enrolments::EnrolmentRequest;
    use crate::controller::fleet::ids::{EnrolmentId, TeamRef};
    let s = setup().await;
    let admin = someone(&s, "root", Role::Admin).await;
    let team = s.user.teams[0].team_id.clone();
    let quota = |n| teams::QuotaUpdate {
        max_appliances: Some(Some(n)),
        ..Default::default()
    };
    s.fleet
        .set_quotas(&admin, &TeamRef::from(team.clone()), quota(0))
        .await
        .unwrap();
    let issued = s
        .fleet
        .issue_enrolment_token(&admin, &team, None, true)
        .await
        .unwrap();
    let csr = csr();
    let request = EnrolmentRequest {
        token: issued.token.clone(),
        csr,
        address: None,
        port: 9443,
        name: Some("edge".into()),
    };
    // The team is full: not accepted at once, not refused either; it waits, its token
    // spent.
    let e = s
        .fleet
        .submit_enrolment("127.0.46.20".parse().unwrap(), request)
        .await
        .unwrap();
    assert_eq!(e.state, EnrolmentState::Pending);
    assert!(e.appliance_id.is_none());
    let tokens = s.fleet.store.enrolment_tokens().await.unwrap();
    assert!(tokens[0].used_at.is_some());
    assert!(s.fleet.store.appliances(false).await.unwrap().is_empty());
    let id = EnrolmentId::from(e.id.clone());
    let err = s.fleet.accept_enrolment(&admin, &id).await.err().unwrap();
    assert_eq!(kind(&err), (403, "quota-exceeded"));
    // With as many waiting as may wait (here one), another request is refused and its
    // token stays unspent, to be used later.
    let second = s
        .fleet
        .issue_enrolment_token(&admin, &team, None, false)
        .await
        .unwrap();
    let hash = crate::controller::auth::token_hash(&second.token);
    let another = crate::controller::enrolments::Enrolment {
        id: crate::controller::auth::new_id(),
        ..e.clone()
    };
    let (outcome, recorded) = s
        .fleet
        .store
        .submit_enrolment(&hash, &another, 1)
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            crate::controller::enrolments::Submitted::TooManyPending(1)
        ),
        "{outcome:?}"
    );
    assert!(recorded.is_none());
    let unspent = s
        .fleet
        .store
        .enrolment_token(&second.record.id)
        .await
        .unwrap();
    assert!(unspent.unwrap().used_at.is_none());
    // With room, an admin accepts it.
    s.fleet
        .set_quotas(&admin, &TeamRef::from(team.clone()), quota(1))
        .await
        .unwrap();
    let e = s.fleet.accept_enrolment(&admin, &id).await.unwrap();
    assert_eq!(e.state, EnrolmentState::Accepted);
    assert_eq!(e.decided_by.as_deref(), Some("root"));
    assert_eq!(s.fleet.store.appliances(false).await.unwrap().len(), 1);
}

/// A user without a personal team, as a principal.
async fn someone(s: &Setup, name: &str, role: Role) -> Principal {
    let record = crate::controller::store::NewUserRecord {
        name,
        role,
        password_hash: "-",
        display_name: None,
        email: None,
    };
    let user = s
        .fleet
        .store
        .create_user(record, None, s.start)
        .await
        .unwrap();
    s.fleet.principal(&user).await.unwrap()
}

/// The principal again, with the memberships it has now.
async fn again(s: &Setup, p: &Principal) -> Principal {
    let user = s.fleet.store.user(&p.id).await.unwrap().unwrap();
    s.fleet.principal(&user).await.unwrap()
}

fn in_team(team: &str, name: &str) -> CreateRequest {
    CreateRequest {
        team: Some(team.into()),
        ttl_minutes: Some(30),
        ..request(name)
    }
}

fn kind(e: &FleetError) -> (u16, &'static str) {
    e.status_and_kind()
}

#[tokio::test]
async fn the_security_model_rule_by_rule() {
    use crate::controller::fleet::ids::{ApplianceId, TaskId, TeamRef};
    let s = setup().await;
    let admin = someone(&s, "root", Role::Admin).await;
    let owner = someone(&s, "olga", Role::Member).await;
    let member = someone(&s, "mike", Role::Member).await;
    let viewer = someone(&s, "vera", Role::Member).await;
    let outsider = someone(&s, "otto", Role::Member).await;

    // Only admins create teams here (members_may_create is off); the creator owns it.
    let e = s.fleet.create_team(&owner, "blue").await.err().unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    let blue = s.fleet.create_team(&admin, "blue").await.unwrap().team;
    let red = s.fleet.create_team(&admin, "red").await.unwrap().team;
    let blue_ref = TeamRef::from(blue.id.clone());
    let by_name = TeamRef::from("blue".to_string());
    // Names are checked and unique; an id-shaped name is refused (ids and names share
    // the path).
    for bad in ["", "a b", "x/y", "00000000-0000-4000-8000-000000000000"] {
        let e = s.fleet.create_team(&admin, bad).await.err().unwrap();
        assert_eq!(kind(&e), (422, "invalid-input"), "{bad:?}");
    }
    let e = s.fleet.create_team(&admin, "blue").await.err().unwrap();
    assert_eq!(kind(&e), (409, "conflict"));

    // The admin (blue's owner) hands blue over: olga owner, mike member, vera viewer;
    // then leaves.
    for (who, role) in [("olga", "owner"), ("mike", "member"), ("vera", "viewer")] {
        s.fleet
            .set_member(&admin, &blue_ref, who, role)
            .await
            .unwrap();
    }
    s.fleet
        .remove_member(&admin, &blue_ref, "root")
        .await
        .unwrap();
    let e = s
        .fleet
        .set_member(&admin, &blue_ref, "mike", "boss")
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));
    let (owner, member, viewer) = (
        again(&s, &owner).await,
        again(&s, &member).await,
        again(&s, &viewer).await,
    );
    let detail = s.fleet.team(&viewer, &by_name).await.unwrap();
    let roles: Vec<(&str, &str)> = detail
        .members
        .iter()
        .map(|m| (m.user_name.as_str(), m.role.as_str()))
        .collect();
    assert_eq!(
        roles,
        [("mike", "member"), ("olga", "owner"), ("vera", "viewer")]
    );

    // Teams: members see theirs, admins all, the outsider none; another team's id is
    // 404, never 403.
    let names = |teams: Vec<crate::controller::teams::Team>| {
        teams.into_iter().map(|t| t.name).collect::<Vec<_>>()
    };
    assert_eq!(names(s.fleet.teams(&viewer).await.unwrap()), ["blue"]);
    assert_eq!(
        names(s.fleet.teams(&admin).await.unwrap()),
        ["alice", "blue", "red"]
    );
    assert!(s.fleet.teams(&outsider).await.unwrap().is_empty());
    for t in [&blue_ref, &by_name, &TeamRef::from(red.id.clone())] {
        let e = s.fleet.team(&outsider, t).await.err().unwrap();
        assert_eq!(kind(&e), (404, "not-found"));
        let e = s.fleet.rename_team(&outsider, t, "x").await.err().unwrap();
        assert_eq!(kind(&e), (404, "not-found"));
    }

    // Creating: members and owners, not viewers; the outsider learns nothing of blue
    // (the same answer as for a team that does not exist).
    let mine = s
        .fleet
        .create(&member, in_team("blue", "lb-1"))
        .await
        .unwrap();
    let appliance = mine.appliance.clone().unwrap();
    assert_eq!(appliance.team_id, blue.id);
    assert_eq!(appliance.owner_id, member.id);
    let theirs = s
        .fleet
        .create(&owner, in_team(&blue.id, "lb-2"))
        .await
        .unwrap();
    let e = s
        .fleet
        .create(&viewer, in_team("blue", "lb-3"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    let nowhere = s
        .fleet
        .create(&outsider, in_team("nowhere", "x"))
        .await
        .err()
        .unwrap();
    let e = s
        .fleet
        .create(&outsider, in_team("blue", "x"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));
    assert_eq!(
        e.to_string().replace("blue", "T"),
        nowhere.to_string().replace("nowhere", "T")
    );
    // Without a team: the caller's only team, or a clear refusal.
    let e = s.fleet.create(&outsider, request("x")).await.err().unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));
    assert!(e.to_string().contains("no team"), "{e}");
    let defaulted = s.fleet.create(&member, request("lb-4")).await.unwrap();
    assert_eq!(defaulted.appliance.unwrap().team_id, blue.id);
    assert_eq!(s.run_tasks().await, 3);

    // Reading: the team's members (viewers too) and admins; to others it does not exist.
    let id = ApplianceId::from(appliance.id.clone());
    for who in [&admin, &owner, &member, &viewer] {
        assert_eq!(s.fleet.visible(who, &id).await.unwrap().id, appliance.id);
        assert_eq!(
            s.fleet
                .list(who, ListFilter::default())
                .await
                .unwrap()
                .len(),
            3
        );
        assert!(!s.fleet.events(who, &id).await.unwrap().is_empty());
    }
    assert_eq!(
        kind(&s.fleet.visible(&outsider, &id).await.err().unwrap()),
        (404, "not-found")
    );
    assert!(
        s.fleet
            .list(&outsider, ListFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        kind(&s.fleet.events(&outsider, &id).await.err().unwrap()),
        (404, "not-found")
    );
    let e = s
        .fleet
        .ping_one(&outsider, &id, Check::Ping, true)
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    let e = s
        .fleet
        .ping_targets(
            &outsider,
            Some(vec![appliance.id.clone()]),
            Check::Ping,
            true,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));

    // Operating: members, owners and admins; viewers read only; outsiders get 404.
    let e = s.fleet.act(&viewer, &id, "stop", None).await.err().unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    let e = s.fleet.delete(&viewer, &id).await.err().unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    let e = s
        .fleet
        .act(&outsider, &id, "stop", None)
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    let e = s.fleet.delete(&outsider, &id).await.err().unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    assert_eq!(
        s.report(&appliance.id, CallbackEvent::Launched).await,
        State::Active
    );
    // The pass-through writes for admins only; members and viewers read.
    for who in [&owner, &member, &viewer] {
        let write = AgentRequest {
            method: AgentMethod::Put,
            path: "/instances/x/haproxy".into(),
            content_type: None,
            accept: None,
            body: Bytes::new(),
        };
        let e = s.fleet.pass_through(who, &id, write).await.err().unwrap();
        assert_eq!(kind(&e), (403, "pass-through-read-only"));
    }
    let stop = match s.fleet.act(&member, &id, "stop", None).await.unwrap() {
        ActionOutcome::Queued(q) => q.task,
        ActionOutcome::Extended(_) => unreachable!(),
    };

    // Tasks: its creator, its team's owners and admins read it; other members and
    // viewers of the team do not, nor outsiders.
    let stop_id = TaskId::from(stop.id.clone());
    for who in [&member, &owner, &admin] {
        assert_eq!(s.fleet.task(who, &stop_id).await.unwrap().id, stop.id);
        assert!(
            s.fleet
                .tasks(who)
                .await
                .unwrap()
                .iter()
                .any(|t| t.id == stop.id)
        );
    }
    for who in [&viewer, &outsider] {
        let e = s.fleet.task(who, &stop_id).await.err().unwrap();
        assert_eq!(kind(&e), (404, "not-found"));
        assert!(
            !s.fleet
                .tasks(who)
                .await
                .unwrap()
                .iter()
                .any(|t| t.id == stop.id)
        );
    }
    let olgas = TaskId::from(theirs.task.id.clone());
    assert_eq!(
        kind(&s.fleet.task(&member, &olgas).await.err().unwrap()),
        (404, "not-found")
    );
    let e = s.fleet.cancel_task(&viewer, &stop_id).await.err().unwrap();
    assert_eq!(kind(&e), (404, "not-found"));

    // Members: owners manage them; members and viewers do not; anyone may leave; the
    // last owner may neither leave nor step down.
    let e = s
        .fleet
        .set_member(&member, &blue_ref, "otto", "viewer")
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    // An owner changes its members' roles; only admins add users to a team.
    let e = s
        .fleet
        .set_member(&owner, &blue_ref, "otto", "viewer")
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    let e = s
        .fleet
        .rename_team(&member, &blue_ref, "navy")
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    let e = s.fleet.delete_team(&viewer, &blue_ref).await.err().unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    let e = s
        .fleet
        .remove_member(&member, &blue_ref, "vera")
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    for e in [
        s.fleet
            .remove_member(&owner, &blue_ref, "olga")
            .await
            .err()
            .unwrap(),
        s.fleet
            .set_member(&owner, &blue_ref, "olga", "member")
            .await
            .err()
            .unwrap(),
    ] {
        assert_eq!(kind(&e), (409, "conflict"));
    }
    s.fleet
        .remove_member(&viewer, &blue_ref, "vera")
        .await
        .unwrap();
    let viewer = again(&s, &viewer).await;
    assert_eq!(
        kind(&s.fleet.visible(&viewer, &id).await.err().unwrap()),
        (404, "not-found")
    );
    let e = s
        .fleet
        .remove_member(&owner, &blue_ref, "vera")
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    // An owner renames; a team with live appliances is not deleted.
    let renamed = s
        .fleet
        .rename_team(&owner, &blue_ref, "navy")
        .await
        .unwrap();
    assert_eq!(renamed.team.name, "navy");
    let e = s.fleet.delete_team(&owner, &blue_ref).await.err().unwrap();
    assert_eq!(kind(&e), (409, "conflict"));
    assert!(e.to_string().contains("3 appliance"), "{e}");

    // Quotas: admins set them, others may not.
    let e = s
        .fleet
        .set_quotas(&owner, &blue_ref, teams::QuotaUpdate::default())
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "forbidden"));
    let e = s
        .fleet
        .set_quotas(
            &admin,
            &blue_ref,
            teams::QuotaUpdate {
                max_appliances: Some(Some(-1)),
                ..Default::default()
            },
        )
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));
    // An empty team is deleted; its id then names nothing.
    s.fleet
        .delete_team(&admin, &TeamRef::from(red.id.clone()))
        .await
        .unwrap();
    let e = s
        .fleet
        .team(&admin, &TeamRef::from(red.id))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
}

#[tokio::test]
async fn quotas_hold_under_concurrent_creates_and_free_up_on_delete() {
    use crate::controller::fleet::ids::{ApplianceId, TeamRef};
    let s = setup().await;
    let admin = someone(&s, "root", Role::Admin).await;
    let team = TeamRef::from(s.user.teams[0].team_id.clone());
    let quota = teams::QuotaUpdate {
        max_appliances: Some(Some(3)),
        ..Default::default()
    };
    let t = s.fleet.set_quotas(&admin, &team, quota).await.unwrap();
    assert_eq!(t.quotas.max_appliances, Some(3));
    // Ten at once: exactly three pass.
    let creates = (0..10).map(|i| {
        let (fleet, user) = (s.fleet.clone(), s.user.clone());
        tokio::spawn(async move { fleet.create(&user, request(&format!("lb-{i}"))).await })
    });
    let mut made = Vec::new();
    let mut refused = 0;
    for c in creates {
        match c.await.unwrap() {
            Ok(q) => made.push(q.appliance.unwrap().id),
            Err(FleetError::QuotaExceeded { quota, limit, used }) => {
                assert_eq!((quota, limit, used), ("max_appliances", 3, 3));
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((made.len(), refused), (3, 7));
    let e = s
        .fleet
        .create(&s.user, request("one-more"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "quota-exceeded"));
    // Nothing half-made: no appliance, event or task for the refused ones.
    assert_eq!(s.fleet.store.appliances(false).await.unwrap().len(), 3);
    assert_eq!(s.run_tasks().await, 3);
    // A deleted appliance frees its slot.
    s.fleet
        .delete(&s.user, &ApplianceId::from(made[0].clone()))
        .await
        .unwrap();
    assert_eq!(s.run_tasks().await, 1);
    assert_eq!(s.state(&made[0]).await, State::Deleted);
    s.fleet.create(&s.user, request("again")).await.unwrap();
    // `null` makes it unlimited again.
    let unlimited = teams::QuotaUpdate {
        max_appliances: Some(None),
        ..Default::default()
    };
    s.fleet.set_quotas(&admin, &team, unlimited).await.unwrap();
    s.fleet.create(&s.user, request("more")).await.unwrap();
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_its_team() {
    let s = setup().await;
    let admin = someone(&s, "root", Role::Admin).await;
    let other = someone(&s, "bob", Role::Member).await;
    let team = s.fleet.create_team(&admin, "bobs").await.unwrap().team;
    s.fleet
        .set_member(&admin, &ids::TeamRef::from(team.id), "bob", "member")
        .await
        .unwrap();
    let other = again(&s, &other).await;
    let keyed = |name: &str| CreateRequest {
        external_id: Some("order-1".into()),
        ..request(name)
    };
    let a = s.fleet.create(&s.user, keyed("lb")).await.unwrap();
    // Another team's same key is its own appliance: no conflict, nothing revealed.
    let b = s.fleet.create(&other, keyed("other")).await.unwrap();
    assert_ne!(a.task.id, b.task.id);
    // The same key again in the first team is the same task.
    let again = s.fleet.create(&s.user, keyed("lb")).await.unwrap();
    assert_eq!(again.task.id, a.task.id);
}

#[tokio::test]
async fn key_pairs_belong_to_a_team_within_its_quota() {
    use crate::controller::fleet::ids::{KeypairId, TeamRef};
    use crate::controller::fleet::keypairs::NewKeypair;
    let s = setup().await;
    let admin = someone(&s, "root", Role::Admin).await;
    let outsider = someone(&s, "otto", Role::Member).await;
    let team = TeamRef::from(s.user.teams[0].team_id.clone());
    let quota = teams::QuotaUpdate {
        max_keypairs: Some(Some(2)),
        ..Default::default()
    };
    s.fleet.set_quotas(&admin, &team, quota).await.unwrap();
    let new = |name: &str| NewKeypair {
        name: name.into(),
        team: None,
        kind: None,
        public_key: None,
    };
    let (first, private) = s.fleet.create_keypair(&s.user, new("one")).await.unwrap();
    assert!(private.unwrap().contains("OPENSSH PRIVATE KEY"));
    assert_eq!(first.team_id, s.user.teams[0].team_id);
    // What is stored holds no private key.
    let stored = s.fleet.store.keypair(&first.id).await.unwrap().unwrap();
    assert_eq!(stored, first);
    assert!(!format!("{stored:?}").contains("PRIVATE"));
    let import = NewKeypair {
        public_key: Some(first.public_key.clone()),
        ..new("two")
    };
    let (second, private) = s.fleet.create_keypair(&s.user, import).await.unwrap();
    assert!(private.is_none());
    assert_eq!(second.fingerprint, first.fingerprint);
    let e = s
        .fleet
        .create_keypair(&s.user, new("three"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "quota-exceeded"));
    assert_eq!(
        e.extensions().unwrap(),
        json!({"quota": "max_keypairs", "limit": 2, "used": 2})
    );
    // Another team's key pair does not exist for the outsider; it has no team to make
    // one in.
    let id = KeypairId::from(first.id.clone());
    let e = s.fleet.keypair(&outsider, &id).await.err().unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    let e = s.fleet.delete_keypair(&outsider, &id).await.err().unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    assert!(s.fleet.keypairs(&outsider).await.unwrap().is_empty());
    let e = s
        .fleet
        .create_keypair(&outsider, new("x"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));
    // Deleting frees the quota; an appliance keeps the key it was created with.
    let q = s
        .fleet
        .create(
            &s.user,
            CreateRequest {
                keypair: Some("one".into()),
                ..request("lb")
            },
        )
        .await
        .unwrap();
    let a = q.appliance.unwrap();
    assert_eq!(a.keypair_id.as_deref(), Some(first.id.as_str()));
    s.fleet.delete_keypair(&s.user, &id).await.unwrap();
    s.fleet.create_keypair(&s.user, new("three")).await.unwrap();
    let kept = s.fleet.store.appliance(&a.id).await.unwrap().unwrap();
    assert_eq!(
        kept.authorized_key.as_deref(),
        Some(first.public_key.as_str())
    );
}

/// Another controller on the same store (a restart), with `prices` for its price list.
fn restarted(s: &Setup, prices: crate::config::controller::Prices) -> Fleet {
    let mut config = s.fleet.config().clone();
    config.prices = prices;
    Fleet::new(
        Parts {
            store: s.fleet.store.clone(),
            ca: s.fleet.ca.clone(),
            backends: vec![("process".into(), s.backend.clone())],
            agents: Box::new(s.agents.clone()),
            hooks: Box::new(s.hooks.clone()),
            clock: s.clock.clone(),
            on_revoke: Box::new(|| {}),
            mailer: Some(Box::new(s.mails.clone())),
        },
        config,
        b"secret".to_vec(),
    )
}

#[tokio::test]
async fn usage_and_invoices_from_a_scripted_lifecycle_across_a_month_and_a_restart() {
    use super::usage::{InvoiceStatus, month_start, next_month};
    use crate::controller::fleet::ids::{ApplianceId, TeamRef};
    let s = setup().await;
    let admin = someone(&s, "root", Role::Admin).await;
    let team = s.user.teams[0].team_id.clone();
    // 23:50 on the last day of a month (whole minutes).
    let m1 = next_month(month_start(s.clock.now()));
    let m0 = month_start(m1 - 1);
    let m2 = next_month(m1);
    s.clock.0.store(m1 - 600, Ordering::SeqCst);
    let id = s.create("lb", None).await;
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
    // Stopped at 00:20 the next day: 10 minutes in one month, 20 in the next.
    s.clock.0.store(m1 + 1200, Ordering::SeqCst);
    let machine = ApplianceId::from(id.clone());
    s.fleet.act(&s.user, &machine, "stop", None).await.unwrap();
    assert_eq!(s.run_tasks().await, 1);
    assert_eq!(s.state(&id).await, State::Stopped);
    s.clock.advance(3600);
    let minutes = |lines: Vec<super::usage::UsageLine>| {
        lines
            .iter()
            .map(|l| {
                (
                    l.template.clone().unwrap(),
                    l.flavor.clone().unwrap(),
                    l.region.clone().unwrap(),
                    l.minutes,
                )
            })
            .collect::<Vec<_>>()
    };
    let line = |m: i64| {
        vec![(
            "process".to_string(),
            "flavor".to_string(),
            "test".to_string(),
            m,
        )]
    };
    let (_, before) = s
        .fleet
        .usage(&s.user, None, Some(m0), Some(m1))
        .await
        .unwrap();
    assert_eq!(minutes(before), line(10));
    let (period, after) = s.fleet.usage(&s.user, None, None, None).await.unwrap();
    assert_eq!(period.0, m1, "this month by default");
    assert_eq!(minutes(after), line(20));
    let (_, both) = s
        .fleet
        .usage(&s.user, None, Some(m0), Some(m2))
        .await
        .unwrap();
    assert_eq!(minutes(both), line(30), "the two months add up");
    // The outsider sees none of it; a team it cannot see is 404.
    let outsider = someone(&s, "otto", Role::Member).await;
    let (_, none) = s
        .fleet
        .usage(&outsider, None, Some(m0), Some(m2))
        .await
        .unwrap();
    assert!(none.is_empty());
    let e = s
        .fleet
        .usage(&outsider, Some(&team), None, None)
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    for (from, to) in [(m0 + 30, m1), (m1, m0), (m0, m0 + 400 * 86_400)] {
        let e = s
            .fleet
            .usage(&s.user, None, Some(from), Some(to))
            .await
            .err()
            .unwrap();
        assert_eq!(kind(&e), (422, "invalid-input"), "{from}..{to}");
    }

    // Invoices: this month's draft, the last month's issued; at 3 + 1 per minute.
    let (page, total) = s.fleet.invoices(&s.user, None, 0, 20).await.unwrap();
    assert_eq!(total, 2);
    let summary =
        |i: &super::usage::Invoice| (i.status, i.total, i.currency.clone(), i.lines.len());
    assert_eq!(
        summary(&page[0]),
        (InvoiceStatus::Draft, 80, "EUR".into(), 2)
    );
    assert_eq!(
        summary(&page[1]),
        (InvoiceStatus::Issued, 40, "EUR".into(), 2)
    );
    let lines: Vec<(&str, &str, i64, i64, i64)> = page[1]
        .lines
        .iter()
        .map(|l| {
            (
                l.kind.as_str(),
                l.name.as_str(),
                l.minutes,
                l.unit_price,
                l.amount,
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("template", "process", 10, 3, 30),
            ("flavor", "flavor", 10, 1, 10)
        ]
    );
    let (second_page, _) = s.fleet.invoices(&s.user, None, 1, 1).await.unwrap();
    assert_eq!(second_page[0].id, page[1].id);
    let by_id = s.fleet.invoice(&s.user, &page[1].id).await.unwrap();
    assert_eq!(by_id, page[1]);
    let e = s.fleet.invoice(&outsider, &page[1].id).await.err().unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    let e = s
        .fleet
        .invoice(&s.user, "inv-2999-01-x")
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (404, "not-found"));

    // A restart with another price list: the issued invoice stays as issued, the draft
    // follows the new prices, and usage is the same (it lives in the store).
    let prices = crate::config::controller::Prices {
        currency: "EUR".into(),
        templates: [("process".to_string(), 10)].into(),
        flavors: Default::default(),
    };
    let again = restarted(&s, prices);
    let (page, _) = again.invoices(&s.user, None, 0, 20).await.unwrap();
    assert_eq!(
        summary(&page[0]),
        (InvoiceStatus::Draft, 200, "EUR".into(), 2)
    );
    assert_eq!(
        summary(&page[1]),
        (InvoiceStatus::Issued, 40, "EUR".into(), 2)
    );
    let (_, after) = again.usage(&s.user, None, None, None).await.unwrap();
    assert_eq!(minutes(after), line(20));

    // The minutes quota: 25 a month; 20 used, so a create passes; started again and
    // run 5 more minutes, the next is refused.
    let quota = teams::QuotaUpdate {
        max_appliance_minutes: Some(Some(25)),
        ..Default::default()
    };
    again
        .set_quotas(&admin, &TeamRef::from(team.clone()), quota)
        .await
        .unwrap();
    let other = again.create(&s.user, request("lb-2")).await.unwrap();
    again
        .cancel_task(&s.user, &ids::TaskId::from(other.task.id))
        .await
        .unwrap();
    again.act(&s.user, &machine, "start", None).await.unwrap();
    assert_eq!(again.run_queued_tasks(s.clock.now()).await, 1);
    s.clock.advance(5 * 60);
    let e = again.create(&s.user, request("lb-3")).await.err().unwrap();
    assert_eq!(kind(&e), (403, "quota-exceeded"));
    assert_eq!(
        e.extensions().unwrap(),
        json!({"quota": "max_appliance_minutes", "limit": 25, "used": 25})
    );
    // Nor does it extend what it has.
    let e = again
        .act(&s.user, &machine, "extend", Some(5))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "quota-exceeded"));
}

#[tokio::test]
async fn launched_expiring_and_stopped_are_mailed_and_retried_without_holding_up_the_lifecycle() {
    let s = setup().await;
    let e = s
        .fleet
        .create(
            &s.user,
            CreateRequest {
                notify_email: Some("not an address".into()),
                ..request("lb")
            },
        )
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));
    assert!(e.to_string().starts_with("notify_email"), "{e}");
    let q = s
        .fleet
        .create(
            &s.user,
            CreateRequest {
                notify_email: Some("ops@example.com".into()),
                ttl_minutes: Some(10),
                ..request("lb")
            },
        )
        .await
        .unwrap();
    let id = q.appliance.unwrap().id;
    assert_eq!(s.run_tasks().await, 1);
    // The server refuses the first attempt: the appliance goes on regardless.
    s.mails.refuse.store(1, Ordering::SeqCst);
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
    s.fleet.webhooks_once().await;
    assert!(s.mails.sent.lock().unwrap().is_empty());
    s.clock.advance(2);
    s.fleet.webhooks_once().await;
    let sent = s.mails.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "retried and sent");
    assert_eq!(sent[0].to, "ops@example.com");
    assert_eq!(sent[0].subject, "applianced: appliance lb is up");
    assert!(sent[0].body.contains(&id), "{}", sent[0].body);
    // Expiring (5 minutes before), then expired: stopped, mailed too; other events
    // (`spawned`, `expired`, `stop`) are not.
    s.clock.advance(5 * 60 + 1);
    s.fleet.timers_once().await.unwrap();
    s.fleet.webhooks_once().await;
    s.clock.advance(5 * 60);
    s.fleet.timers_once().await.unwrap();
    assert_eq!(s.run_tasks().await, 1);
    assert_eq!(s.state(&id).await, State::Stopped);
    s.fleet.webhooks_once().await;
    let subjects: Vec<String> = s
        .mails
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.subject.clone())
        .collect();
    assert_eq!(
        subjects,
        [
            "applianced: appliance lb is up",
            "applianced: appliance lb expires in 5 minutes",
            "applianced: appliance lb has stopped",
        ]
    );
    // Each is a delivery of its event, delivered.
    let mailed: Vec<(String, String)> = s
        .fleet
        .store
        .events(&id)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|(e, ds)| ds.into_iter().map(move |d| (e.kind.clone(), d.url)))
        .collect();
    assert_eq!(
        mailed,
        ["launched", "expiring", "stopped"]
            .map(|k| (k.to_string(), "mailto:ops@example.com".to_string()))
    );
}

#[tokio::test]
async fn a_cluster_takes_a_write_active_first_and_is_destroyed_with_its_appliances() {
    use crate::controller::fleet::ids::ClusterId;
    let s = setup().await;
    let admin = someone(&s, "root", Role::Admin).await;
    let e = s
        .fleet
        .create_cluster(&s.user, None, "pair", "TRIPLE")
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));
    let pair = s
        .fleet
        .create_cluster(&s.user, None, "pair", "ACTIVE_STANDBY")
        .await
        .unwrap()
        .cluster;
    let single = s
        .fleet
        .create_cluster(&s.user, None, "one", "SINGLE")
        .await
        .unwrap()
        .cluster;
    let join = |name: &str, cluster: &str| CreateRequest {
        cluster: Some(cluster.into()),
        ttl_minutes: Some(30),
        ..request(name)
    };
    let mut ids = Vec::new();
    for name in ["a1", "a2"] {
        let q = s.fleet.create(&s.user, join(name, "pair")).await.unwrap();
        ids.push(q.appliance.unwrap().id);
    }
    // Full: two for an active-standby pair, one for a single.
    let e = s
        .fleet
        .create(&s.user, join("a3", "pair"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (409, "conflict"));
    s.fleet
        .create(&s.user, join("b1", &single.id))
        .await
        .unwrap();
    let e = s
        .fleet
        .create(&s.user, join("b2", "one"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (409, "conflict"));
    let e = s
        .fleet
        .create(&s.user, join("c", "nothing"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (422, "invalid-input"));
    assert_eq!(s.run_tasks().await, 3);
    for id in &ids {
        assert_eq!(s.report(id, CallbackEvent::Launched).await, State::Active);
    }
    let cid = ClusterId::from(pair.id.clone());
    let detail = s.fleet.cluster(&s.user, &cid).await.unwrap();
    assert_eq!(
        detail.active.as_deref(),
        Some(ids[0].as_str()),
        "the first to join"
    );
    assert_eq!(detail.members.len(), 2);

    // A write: admins only; the active member first, then the standby.
    let write = || AgentRequest {
        method: AgentMethod::Put,
        path: "/instances/i-1/503".into(),
        content_type: Some("text/html".into()),
        accept: None,
        body: Bytes::from_static(b"<p>busy</p>"),
    };
    let e = s
        .fleet
        .cluster_write(&s.user, &cid, write())
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (403, "pass-through-read-only"));
    let mut addresses = Vec::new();
    for id in &ids {
        addresses.push(s.fleet.appliance(id).await.unwrap().address.unwrap());
    }
    let (active_addr, standby_addr) = (addresses[0].clone(), addresses[1].clone());
    s.agents.seen.lock().unwrap().clear();
    let task = s.fleet.cluster_write(&admin, &cid, write()).await.unwrap();
    assert_eq!(task.team_id.as_deref(), Some(pair.team_id.as_str()));
    assert_eq!(s.run_tasks().await, 1);
    let done = s
        .fleet
        .task(&admin, &ids::TaskId::from(task.id.clone()))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let result: Value = serde_json::from_str(done.result.as_deref().unwrap()).unwrap();
    let outcomes: Vec<(&str, &str)> = result["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [("active", "applied"), ("standby", "applied")]);
    let seen: Vec<String> = s
        .agents
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|o| o.url.clone())
        .collect();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].contains(&active_addr) && seen[1].contains(&standby_addr),
        "{seen:?}"
    );
    assert!(seen[0].ends_with("/instances/i-1/503"), "{seen:?}");
    // The owner of the team reads the task; the active member refusing stops the write.
    s.fleet
        .task(&s.user, &ids::TaskId::from(task.id))
        .await
        .unwrap();
    s.agents.seen.lock().unwrap().clear();
    s.agents.answers.lock().unwrap().push_back(Ok(409));
    let task = s.fleet.cluster_write(&admin, &cid, write()).await.unwrap();
    assert_eq!(s.run_tasks().await, 1);
    let done = s
        .fleet
        .task(&admin, &ids::TaskId::from(task.id))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Failed);
    let problem: Value = serde_json::from_str(done.problem.as_deref().unwrap()).unwrap();
    assert_eq!(problem["status"], 502, "{problem}");
    assert_eq!(problem["members"][0]["outcome"], "failed", "{problem}");
    assert_eq!(problem["members"][1]["outcome"], "skipped", "{problem}");
    assert_eq!(
        s.agents.seen.lock().unwrap().len(),
        1,
        "the standby was not written"
    );

    // Deleting the cluster destroys its appliances, then the cluster.
    let outsider = someone(&s, "otto", Role::Member).await;
    let e = s.fleet.delete_cluster(&outsider, &cid).await.err().unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    s.fleet.delete_cluster(&s.user, &cid).await.unwrap();
    // From now on no appliance joins it.
    let e = s
        .fleet
        .create(&s.user, join("late", "pair"))
        .await
        .err()
        .unwrap();
    assert_eq!(kind(&e), (409, "conflict"));
    // The cluster's task, then the destroy task it queued for each member.
    assert_eq!(s.run_tasks().await, 3);
    for id in &ids {
        assert_eq!(s.state(id).await, State::Deleted);
    }
    let e = s.fleet.cluster(&s.user, &cid).await.err().unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
    assert_eq!(
        s.fleet.clusters(&s.user).await.unwrap().len(),
        1,
        "the single one"
    );
}

#[tokio::test]
async fn a_deleted_team_has_its_invoices_issued_and_kept() {
    use super::usage::{InvoiceStatus, month_start, next_month};
    use crate::controller::fleet::ids::{ApplianceId, TeamRef};
    let s = setup().await;
    let admin = someone(&s, "root", Role::Admin).await;
    let team = TeamRef::from(s.user.teams[0].team_id.clone());
    let m1 = next_month(month_start(s.clock.now()));
    s.clock.0.store(m1 + 3600, Ordering::SeqCst);
    let id = s.create("lb", None).await;
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
    s.clock.advance(600);
    s.fleet
        .delete(&s.user, &ApplianceId::from(id.clone()))
        .await
        .unwrap();
    assert_eq!(s.run_tasks().await, 1);
    // The team goes with its appliances: this month's invoice is issued at once (its
    // usage is final) and stays, for admins.
    s.fleet.delete_team(&s.user, &team).await.unwrap();
    let id = format!(
        "inv-{}-{}",
        &crate::certs::format_unix(m1)[..7],
        team.as_str()
    );
    let kept = s.fleet.invoice(&admin, &id).await.unwrap();
    assert_eq!(kept.status, InvoiceStatus::Issued);
    assert_eq!(kept.total, 10 * 3 + 10, "ten minutes at 3 + 1");
    let e = s.fleet.invoice(&s.user, &id).await.err().unwrap();
    assert_eq!(kind(&e), (404, "not-found"));
}
