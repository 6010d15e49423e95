//! The fleet: what the controller does to appliances, whoever asks. Lifecycle moves
//! ([`Fleet::apply`]), the appliances' callbacks, durable tasks run by a worker pool,
//! the timers (expiry, watchdogs, rotation) and webhook deliveries. Every piece of state
//! lives in the store, so a controller that dies and comes back (or another one, on
//! PostgreSQL) carries on where it stopped.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ca::{self, ControllerCa};
use super::lifecycle::{self, Due, Event, State, Timers};
use super::records::{Appliance, Changes, DeliveryState, Moved, NewTask, Record, Task, TaskState};
use super::store::{Store, StoreError};
use crate::config::controller::ControllerConfig;
use ids::ApplianceId;
use ports::{
    AgentClient, Backend, CallError, Incoming, Join, MachineAction, MachineSpec, MachineState,
    Outgoing, Verb,
};

pub mod accounts;
pub mod agents;
mod callbacks;
pub mod catalogue;
pub mod clusters;
pub mod enrolments;
pub mod error;
pub mod ids;
pub mod keypairs;
mod notify;
pub mod operations;
pub mod ports;
mod provision;
mod tasks;
pub mod teams;
mod timers;
pub mod usage;
pub mod users;
pub mod views;
mod webhooks;

#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
mod tests;

/// How long before expiry the warning event fires.
pub const EXPIRY_WARNING_SECS: i64 = 300;
/// A claimed task belongs to its controller this long without renewal.
const LEASE_SECS: i64 = 30;
/// A task interrupted this many times (its controller died) is failed, not retried.
const MAX_TASK_ATTEMPTS: i64 = 3;
/// Agents called at the same time by one ping of many.
pub const PING_CONCURRENCY: usize = 64;

tokio::task_local! {
    /// The user on whose behalf the current request or task acts, by name.
    static ACTOR: Option<String>;
}

/// Runs `f` on behalf of `actor`: the events it records name that user, and the tasks
/// it queues carry the name to the events their steps record.
pub async fn acting_as<F: std::future::Future>(actor: Option<String>, f: F) -> F::Output {
    ACTOR.scope(actor, f).await
}

/// The user the current request or task acts for, if any.
pub fn current_actor() -> Option<String> {
    ACTOR.try_with(Clone::clone).ok().flatten()
}

/// A task's request with the acting user's name, which its steps' events carry.
fn with_actor(mut request: Value) -> Value {
    if let (Some(actor), Value::Object(fields)) = (current_actor(), &mut request) {
        fields.insert("actor".into(), Value::String(actor));
    }
    request
}

/// What a ping asks an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// `GET /`: identity and versions.
    #[default]
    Ping,
    /// `GET /status`: the full status, kept as the appliance's last status.
    Status,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Ping => "ping",
            Check::Status => "status",
        }
    }
}

pub use super::records::TaskKind;

/// The time, in Unix seconds; a fake in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        crate::certs::now_unix()
    }
}

pub use error::FleetError;

fn illegal(a: &Appliance, event: Event) -> FleetError {
    FleetError::Conflict(format!(
        "cannot {} appliance {} while it is {}",
        event.name(),
        a.id,
        a.state.as_str()
    ))
}

/// What a fleet runs on.
pub struct Parts {
    pub store: Arc<Store>,
    pub ca: Arc<ControllerCa>,
    /// The compute backends by name, the default one first.
    pub backends: Vec<(String, Arc<dyn Backend>)>,
    pub agents: Box<dyn AgentClient>,
    pub hooks: Box<dyn AgentClient>,
    pub clock: Arc<dyn Clock>,
    /// Called after a revocation (the appliance zone reloads its CRL).
    pub on_revoke: Box<dyn Fn() + Send + Sync>,
    /// Sends notifications; none without an SMTP server.
    pub mailer: Option<Box<dyn ports::Mailer>>,
}

pub struct Fleet {
    pub store: Arc<Store>,
    pub ca: Arc<ControllerCa>,
    /// The compute backends by name, the default one first (never empty).
    pub backends: Vec<(String, Arc<dyn Backend>)>,
    /// Calls agents with the controller's client certificate (replaced by
    /// [`Fleet::set_agent_client`] before it expires).
    agents: arc_swap::ArcSwap<Box<dyn AgentClient>>,
    /// Calls webhook receivers.
    hooks: Box<dyn AgentClient>,
    config: ControllerConfig,
    secret: Vec<u8>,
    /// This controller, as the owner of task leases: `HOST/PID/NONCE`.
    pub lease_owner: String,
    queued: tokio::sync::Notify,
    clock: Arc<dyn Clock>,
    /// Called after a revocation (the appliance zone reloads its CRL).
    on_revoke: Box<dyn Fn() + Send + Sync>,
    mailer: Option<Box<dyn ports::Mailer>>,
}

impl Fleet {
    pub fn new(parts: Parts, config: ControllerConfig, secret: Vec<u8>) -> Fleet {
        let Parts {
            store,
            ca,
            backends,
            agents,
            hooks,
            clock,
            on_revoke,
            mailer,
        } = parts;
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Fleet {
            store,
            ca,
            backends,
            agents: arc_swap::ArcSwap::from_pointee(agents),
            hooks,
            lease_owner: format!(
                "{host}/{}/{}",
                std::process::id(),
                &super::auth::new_id()[..8]
            ),
            config,
            secret,
            queued: tokio::sync::Notify::new(),
            clock,
            on_revoke,
            mailer,
        }
    }

    /// Calls agents with this client from now on (a renewed client certificate).
    pub fn set_agent_client(&self, client: Box<dyn AgentClient>) {
        self.agents.store(Arc::new(client));
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    pub fn ttl_range(&self) -> (u32, u32) {
        let a = &self.config.appliances;
        (a.ttl_min_minutes, a.ttl_max_minutes)
    }

    pub fn webhooks(&self) -> &crate::config::controller::Webhooks {
        &self.config.webhooks
    }

    /// Wakes a worker: a task was queued.
    pub fn task_queued(&self) {
        self.queued.notify_one();
    }

    pub async fn appliance(&self, id: &str) -> Result<Appliance, FleetError> {
        self.store.appliance(id).await?.ok_or(FleetError::NotFound)
    }

    /// Moves an appliance by `event` (per the lifecycle table) and sets `changes`;
    /// retried when a concurrent change won. Heartbeats that change nothing are not
    /// recorded as events.
    pub async fn apply(
        &self,
        id: &str,
        event: Event,
        changes: impl Fn(&Appliance) -> Changes,
        detail: Option<Value>,
    ) -> Result<Appliance, FleetError> {
        self.move_by(id, event, changes, detail, None)
            .await
            .map(|(a, _)| a)
    }

    /// Moves an appliance by `event` (no other changes) and queues a task `kind` for it
    /// in the same transaction, so that the task's work (and whatever the appliance
    /// reports while it runs) always comes after the move's event. A conflict, and
    /// nothing done, when the appliance already has an unfinished task. The task's id.
    pub async fn apply_and_queue(
        &self,
        id: &str,
        event: Event,
        kind: TaskKind,
        owner_id: &str,
        request: Value,
    ) -> Result<String, FleetError> {
        let task = NewTask {
            kind,
            appliance_id: Some(id),
            owner_id,
            request: with_actor(request).to_string(),
            team_id: None,
        };
        let (_, task_id) = self
            .move_by(id, event, |_| Changes::default(), None, Some(&task))
            .await?;
        task_id.ok_or_else(|| FleetError::Internal("the task was not queued".into()))
    }

    async fn move_by(
        &self,
        id: &str,
        event: Event,
        changes: impl Fn(&Appliance) -> Changes,
        detail: Option<Value>,
        task: Option<&NewTask<'_>>,
    ) -> Result<(Appliance, Option<String>), FleetError> {
        for _ in 0..5 {
            let a = self.appliance(id).await?;
            let to = lifecycle::next(a.state, event).ok_or_else(|| illegal(&a, event))?;
            // Heartbeats and the steps of provisioning are not events of their own.
            let quiet = matches!(event, Event::Heartbeat | Event::Provision);
            let actor = current_actor();
            let record = (to != a.state || !quiet).then(|| Record {
                kind: event.name(),
                detail: detail.clone(),
                actor: actor.as_deref(),
            });
            let now = self.clock.now();
            let moved = self
                .store
                .transition(&a, to, &changes(&a), record, task, now)
                .await
                .map_err(|e| match task {
                    Some(_) => task_conflict(e),
                    None => e.into(),
                })?;
            if let Moved::Done { task_id } = moved {
                if to != a.state {
                    tracing::info!(appliance = %a.id, from = a.state.as_str(), to = to.as_str(), event = event.name(), "appliance state");
                }
                if task_id.is_some() {
                    self.task_queued();
                }
                return Ok((self.appliance(id).await?, task_id));
            }
        }
        Err(FleetError::Conflict(format!(
            "appliance {id} is changing; try again"
        )))
    }
}

/// An appliance as the fleet reports it (API answers and task results).
pub fn appliance_view(a: &Appliance) -> Value {
    serde_json::to_value(views::ApplianceView::from(a)).unwrap_or_default()
}

/// Runs blocking work (files, processes, the CA) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FleetError> + Send + 'static,
) -> Result<T, FleetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FleetError::Internal(e.to_string()))?
}

/// Runs a call of the compute backend on the blocking pool.
async fn on_backend<T: Send + 'static>(
    backend: &Arc<dyn Backend>,
    f: impl FnOnce(&dyn Backend) -> Result<T, ports::BackendError> + Send + 'static,
) -> Result<T, FleetError> {
    let backend = backend.clone();
    blocking(move || f(backend.as_ref()).map_err(FleetError::from)).await
}

/// A second unfinished task for one appliance, in the API's words.
fn task_conflict(e: StoreError) -> FleetError {
    match e {
        StoreError::Conflict(_) => {
            FleetError::Conflict("another operation on this appliance is still running".into())
        }
        other => other.into(),
    }
}
