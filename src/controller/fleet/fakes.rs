//! Fakes of the fleet's ports for unit and in-process tests: a backend that records what
//! it is asked, HTTPS peers that answer from a script, and a clock the test moves.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::Clock;
use super::ids::ApplianceId;
use super::ports::*;

/// A backend that records what it is asked and keeps its machines' states.
pub struct FakeBackend {
    pub calls: Mutex<Vec<String>>,
    pub machines: Mutex<HashMap<String, MachineState>>,
    pub capabilities: Mutex<Capabilities>,
    /// Machines its one region holds.
    pub capacity: AtomicU32,
    /// Writing the appliance's files fails (a full disk).
    pub disk_full: AtomicBool,
    /// Creating or starting fails (the backend refuses).
    pub refuse_start: AtomicBool,
    /// Creating fails for want of room (a cloud's capacity).
    pub no_capacity: AtomicBool,
    /// The command the last machine that enrols was given.
    pub enrol_command: Mutex<Option<String>>,
}

impl Default for FakeBackend {
    fn default() -> Self {
        FakeBackend {
            calls: Mutex::default(),
            machines: Mutex::default(),
            capabilities: Mutex::new(Capabilities {
                create: true,
                power: true,
                suspend: true,
                regions: false,
                enrols: false,
            }),
            capacity: AtomicU32::new(200),
            disk_full: Default::default(),
            refuse_start: Default::default(),
            no_capacity: Default::default(),
            enrol_command: Mutex::default(),
        }
    }
}

impl FakeBackend {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: &str, id: &ApplianceId) {
        self.calls.lock().unwrap().push(format!("{call} {id}"));
    }

    fn set(&self, id: &ApplianceId, state: MachineState) {
        self.machines
            .lock()
            .unwrap()
            .insert(id.as_str().to_string(), state);
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "process"
    }
    fn capabilities(&self) -> Capabilities {
        *self.capabilities.lock().unwrap()
    }
    fn catalogue(&self) -> Catalogue {
        let entry = |id: &str| CatalogueEntry {
            id: id.into(),
            name: id.into(),
            description: String::new(),
        };
        Catalogue {
            images: vec![entry("image")],
            flavors: vec![entry("flavor")],
            networks: vec![entry("network")],
        }
    }
    fn regions(&self) -> Vec<Region> {
        vec![Region {
            name: "test".into(),
            priority: 0,
            capacity: self.capacity.load(Ordering::SeqCst),
        }]
    }
    fn address(&self, slot: i64) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 46, u8::try_from(slot + 1).ok()?]))
    }
    fn slots(&self) -> std::ops::Range<i64> {
        0..i64::from(self.capacity.load(Ordering::SeqCst))
    }
    fn agent_port(&self) -> u16 {
        9443
    }
    fn create(&self, spec: &MachineSpec<'_>) -> Result<MachineState, BackendError> {
        self.record("create", spec.id);
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("no space left on device").into());
        }
        if self.refuse_start.load(Ordering::SeqCst) {
            self.set(spec.id, MachineState::Stopped);
            return Err(BackendError::Failed("cannot start".into()));
        }
        if self.no_capacity.load(Ordering::SeqCst) {
            return Err(BackendError::NoCapacity(
                "InsufficientInstanceCapacity: none left".into(),
            ));
        }
        if let Join::Enrol { command } = spec.join {
            *self.enrol_command.lock().unwrap() = Some(command.to_string());
        }
        let state = MachineState::Running { pid: Some(4242) };
        self.set(spec.id, state);
        Ok(state)
    }
    fn get(&self, id: &ApplianceId) -> Result<MachineState, BackendError> {
        let machines = self.machines.lock().unwrap();
        Ok(machines
            .get(id.as_str())
            .copied()
            .unwrap_or(MachineState::Absent))
    }
    fn action(&self, id: &ApplianceId, action: MachineAction) -> Result<(), BackendError> {
        self.record(action.name(), id);
        if !action.supported_by(self.capabilities()) {
            return Err(BackendError::Unsupported {
                backend: "process",
                action: action.name(),
            });
        }
        if action == MachineAction::Start && self.refuse_start.load(Ordering::SeqCst) {
            return Err(BackendError::Failed("cannot start".into()));
        }
        let state = match action {
            MachineAction::Start | MachineAction::Resume => {
                MachineState::Running { pid: Some(4242) }
            }
            MachineAction::Stop => MachineState::Stopped,
            MachineAction::Suspend => MachineState::Suspended,
        };
        self.set(id, state);
        Ok(())
    }
    fn delete(&self, id: &ApplianceId) -> Result<(), BackendError> {
        self.record("delete", id);
        self.machines.lock().unwrap().remove(id.as_str());
        Ok(())
    }
}

/// An HTTPS peer that answers from a script (then 200 `{}`), recording each request.
#[derive(Default)]
pub struct Script {
    pub answers: Mutex<VecDeque<Result<u16, CallError>>>,
    pub seen: Mutex<Vec<Outgoing>>,
}

impl AgentClient for Arc<Script> {
    fn call(&self, request: Outgoing) -> BoxFuture<'_, Result<Incoming, CallError>> {
        self.seen.lock().unwrap().push(request);
        let next = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(200));
        Box::pin(async move {
            next.map(|status| Incoming {
                status,
                content_type: Some("application/json".into()),
                body: Bytes::from_static(b"{\"appliance_id\": \"x\"}"),
            })
        })
    }
}

/// A clock the test moves.
pub struct FakeClock(pub AtomicI64);

impl Clock for FakeClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl FakeClock {
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl super::Fleet {
    /// Claims and runs every queued task at `now`, as a worker would; how many ran.
    pub(crate) async fn run_queued_tasks(&self, now: i64) -> usize {
        let mut ran = 0;
        while let Some(task) = self
            .store
            .claim_task(&self.lease_owner, now, now + super::LEASE_SECS)
            .await
            .unwrap()
        {
            self.run_claimed(task).await;
            ran += 1;
        }
        ran
    }
}

/// A mailer that keeps what it is given, refusing the first `refuse` mails.
#[derive(Default)]
pub struct FakeMailer {
    pub sent: Mutex<Vec<Mail>>,
    pub refuse: AtomicU32,
}

impl Mailer for Arc<FakeMailer> {
    fn send(&self, mail: Mail) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("451 try again later".into());
            }
            self.sent.lock().unwrap().push(mail);
            Ok(())
        })
    }
}
