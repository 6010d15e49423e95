//! The fleet's rules against fakes: a backend that only records, agents and webhook
//! receivers that answer as told, and a clock the test moves. Hours of appliance life
//! (expiry, its warning, watchdogs, leases, retries, webhook backoff) in milliseconds.

use std::sync::atomic::{AtomicI64, Ordering};

use super::fakes::{FakeBackend, FakeClock, Script};
use super::ports::*;
use super::*;
use crate::callback::{Callback, CallbackEvent};
use crate::controller::fleet::operations::CreateRequest;
use crate::controller::store::{Role, User};

/// A create request for `name` with the defaults.
fn request(name: &str) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        ttl_minutes: None,
        external_id: None,
        callback_url: None,
        template: None,
    }
}

struct Setup {
    fleet: Arc<Fleet>,
    backend: Arc<FakeBackend>,
    agents: Arc<Script>,
    hooks: Arc<Script>,
    clock: Arc<FakeClock>,
    start: i64,
    user: User,
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
             [tasks]\nagent_attempts = 2\n[webhooks]\nmax_attempts = 3\n",
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
    let fleet = Arc::new(Fleet::new(
        Parts {
            store: store.clone(),
            ca,
            backend: backend.clone(),
            agents: Box::new(agents.clone()),
            hooks: Box::new(hooks.clone()),
            clock: clock.clone(),
            on_revoke: Box::new(|| {}),
        },
        config,
        b"secret".to_vec(),
    ));
    let user = store
        .create_user("alice", Role::Member, "-", start)
        .await
        .unwrap();
    Setup {
        fleet,
        backend,
        agents,
        hooks,
        clock,
        start,
        user,
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
async fn what_the_backend_cannot_do_is_refused_before_anything_is_queued() {
    let s = setup().await;
    let id = s.create("lb", None).await;
    assert_eq!(s.report(&id, CallbackEvent::Launched).await, State::Active);
    let machine = ids::ApplianceId::from(id.clone());
    s.backend.capabilities.lock().unwrap().suspend = false;
    for action in ["suspend", "resume"] {
        let e = s
            .fleet
            .act(&s.user, &machine, action, None)
            .await
            .err()
            .unwrap();
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
    assert_eq!(s.backend.get(&machine), MachineState::Stopped);
    // A backend that cannot create refuses creates.
    s.backend.capabilities.lock().unwrap().create = false;
    let e = s.fleet.create(&s.user, request("lb2")).await.err().unwrap();
    assert_eq!(e.status_and_kind(), (409, "not-supported-by-backend"));
    assert_eq!(s.run_tasks().await, 0);
}
