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
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::backend::ProcessBackend;
use super::ca::{self, ControllerCa};
use super::lifecycle::{self, Due, Event, State, Timers};
use super::records::{Appliance, Changes, Moved, NewTask, Record, Task};
use super::store::{Store, StoreError};
use crate::config::controller::ControllerConfig;
use crate::transport::client::{Client, ClientError, Reply, json_headers};

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

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no such appliance")]
    NotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => FleetError::Conflict(format!("{what} already exists")),
            other => FleetError::Internal(other.to_string()),
        }
    }
}

impl FleetError {
    pub fn status(&self) -> StatusCode {
        match self {
            FleetError::NotFound => StatusCode::NOT_FOUND,
            FleetError::Forbidden(_) => StatusCode::FORBIDDEN,
            FleetError::Conflict(_) => StatusCode::CONFLICT,
            FleetError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FleetError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            FleetError::NoCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            FleetError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            FleetError::NotFound => "not-found",
            FleetError::Forbidden(_) => "forbidden",
            FleetError::Conflict(_) => "conflict",
            FleetError::Invalid(_) => "invalid-input",
            FleetError::BadGateway(_) => "bad-gateway",
            FleetError::NoCapacity(_) => "no-capacity",
            FleetError::Internal(_) => "internal",
        }
    }

    /// The problem document stored with a failed task.
    pub fn problem(&self) -> Value {
        let status = self.status();
        json!({
            "type": format!("urn:applianced:problem:{}", self.kind()),
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": match self {
                FleetError::Internal(_) => "internal error".to_string(),
                other => other.to_string(),
            },
        })
    }
}

fn illegal(a: &Appliance, event: Event) -> FleetError {
    FleetError::Conflict(format!(
        "cannot {} appliance {} while it is {}",
        event.name(),
        a.id,
        a.state.as_str()
    ))
}

/// A callback from an appliance (`POST /v1/events` on the appliance zone).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Callback {
    pub event: String,
    #[serde(default)]
    pub appliance_id: Option<String>,
    #[serde(default)]
    pub status: Option<Value>,
}

pub struct Fleet {
    pub store: Arc<Store>,
    pub ca: Arc<ControllerCa>,
    pub backend: Arc<ProcessBackend>,
    /// Calls agents with the controller's client certificate (replaced by
    /// [`Fleet::refresh_agent_client`] before it expires).
    agents: arc_swap::ArcSwap<Client>,
    hooks: Client,
    config: ControllerConfig,
    secret: Vec<u8>,
    /// This controller, as the owner of task leases: `HOST/PID/NONCE`.
    pub lease_owner: String,
    queued: tokio::sync::Notify,
    /// Called after a revocation (the appliance zone reloads its CRL).
    on_revoke: Box<dyn Fn() + Send + Sync>,
}

impl Fleet {
    pub fn new(
        store: Arc<Store>,
        ca: Arc<ControllerCa>,
        backend: Arc<ProcessBackend>,
        config: ControllerConfig,
        secret: Vec<u8>,
        on_revoke: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Fleet, String> {
        let agents = Client::new(Some(ca.agent_client()?), config.tasks.agent_timeout.0);
        let roots =
            crate::certs::load_certs(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"))
                .unwrap_or_default();
        let hooks_tls = crate::transport::client::client_config(&roots, None)
            .ok()
            .map(Arc::new);
        let hooks = Client::new(hooks_tls, config.webhooks.timeout.0);
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Fleet {
            store,
            ca,
            backend,
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
            on_revoke,
        })
    }

    /// Re-reads the controller's client certificate, issuing a new one when it is within
    /// the rotation window.
    pub fn refresh_agent_client(&self) -> Result<(), String> {
        let tls = self.ca.agent_client()?;
        self.agents.store(Arc::new(Client::new(
            Some(tls),
            self.config.tasks.agent_timeout.0,
        )));
        Ok(())
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
        kind: &str,
        owner_id: &str,
        request: Value,
    ) -> Result<String, FleetError> {
        let task = NewTask {
            kind,
            appliance_id: Some(id),
            owner_id,
            request: with_actor(request).to_string(),
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
            let now = crate::certs::now_unix();
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

    /// A callback from the appliance named by the caller's certificate.
    pub async fn callback(&self, caller: &str, cb: Callback) -> Result<Appliance, FleetError> {
        if cb.appliance_id.as_deref().is_some_and(|id| id != caller) {
            return Err(FleetError::Forbidden(format!(
                "the certificate of {caller} cannot report for another appliance"
            )));
        }
        let a = match self.store.appliance(caller).await? {
            Some(a) if a.state != State::Deleted => a,
            _ => {
                return Err(FleetError::Forbidden(format!(
                    "{caller} is not an appliance of this controller"
                )));
            }
        };
        let now = crate::certs::now_unix();
        let status = cb.status.filter(|s| !s.is_null()).map(|s| s.to_string());
        match cb.event.as_str() {
            "launched" => {
                let ttl = a.ttl_minutes * 60;
                self.apply(
                    &a.id,
                    Event::Launched,
                    |cur| Changes {
                        // The expiry clock starts at the first `launched` after a boot.
                        launched_at: matches!(cur.state, State::Booting | State::LaunchTimeout)
                            .then_some(now),
                        expires_at: matches!(cur.state, State::Booting | State::LaunchTimeout)
                            .then_some(now + ttl),
                        last_heartbeat_at: Some(now),
                        last_status: status.clone(),
                        ..Changes::default()
                    },
                    None,
                )
                .await
            }
            "heartbeat" => {
                self.apply(
                    &a.id,
                    Event::Heartbeat,
                    |_| Changes {
                        last_heartbeat_at: Some(now),
                        last_status: status.clone(),
                        ..Changes::default()
                    },
                    None,
                )
                .await
            }
            "stopped" => {
                self.apply(
                    &a.id,
                    Event::StoppedCallback,
                    |_| Changes::default(),
                    Some(json!({"reported_by": "appliance"})),
                )
                .await
            }
            other => Err(FleetError::Invalid(format!(
                "event {other:?}: launched, heartbeat or stopped"
            ))),
        }
    }

    /// The agent's URL for `path` (which starts with `/`).
    fn agent_url(a: &Appliance, path: &str) -> Result<String, FleetError> {
        let (Some(address), Some(port)) = (&a.address, a.agent_port) else {
            return Err(FleetError::Conflict(format!(
                "appliance {} has no address yet",
                a.id
            )));
        };
        let host = match address.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => address.clone(),
        };
        Ok(format!("https://{host}:{port}{path}"))
    }

    /// Calls an appliance's agent, retrying what can be retried: any failure before the
    /// request was sent, and timeouts of reads. Fails with 502 when the agent does not
    /// answer after `tasks.agent_attempts`.
    pub async fn call_agent(
        &self,
        a: &Appliance,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Reply, FleetError> {
        let url = Self::agent_url(a, path)?;
        let attempts = self.config.tasks.agent_attempts.max(1);
        let idempotent = method != Method::POST;
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self
                .agents
                .load()
                .send(method.clone(), &url, headers.clone(), body.clone())
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    let before_sending =
                        matches!(e, ClientError::Connect(..) | ClientError::Tls(..));
                    last = e.to_string();
                    if !e.is_transient() || !(idempotent || before_sending) {
                        break;
                    }
                    if attempt < attempts {
                        let pause = Duration::from_millis(200 << (attempt - 1).min(5));
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
        Err(FleetError::BadGateway(format!(
            "the agent of {} does not answer: {last}",
            a.id
        )))
    }

    /// `GET /` of the agent (`check` ping) or `GET /status` (`check` status, kept as the
    /// appliance's last status): reachability, latency and the agent's answer.
    pub async fn ping(&self, a: &Appliance, check: Check) -> Result<Value, FleetError> {
        let (answer, status) = self.probe(a, check).await?;
        if let Some(status) = status {
            self.store
                .record_statuses(&[(a.id.clone(), status)])
                .await?;
        }
        Ok(answer)
    }

    /// One call to the agent; the answer, and the status to keep when it is one.
    async fn probe(
        &self,
        a: &Appliance,
        check: Check,
    ) -> Result<(Value, Option<String>), FleetError> {
        if !a.state.is_running() {
            return Err(FleetError::Conflict(format!(
                "appliance {} is {}: nothing to ping",
                a.id,
                a.state.as_str()
            )));
        }
        let path = match check {
            Check::Ping => "/",
            Check::Status => "/status",
        };
        let started = std::time::Instant::now();
        let reply = self
            .call_agent(a, Method::GET, path, json_headers(), Bytes::new())
            .await?;
        let latency_us = started.elapsed().as_micros();
        if !reply.status.is_success() {
            return Err(FleetError::BadGateway(format!(
                "the agent of {} answered {}",
                a.id, reply.status
            )));
        }
        let answer = serde_json::from_slice::<Value>(&reply.body).unwrap_or(Value::Null);
        let status = (check == Check::Status && answer.is_object()).then(|| answer.to_string());
        Ok((
            json!({
                "id": a.id,
                "reachable": true,
                "latency_ms": (latency_us as f64) / 1000.0,
                "agent": answer,
            }),
            status,
        ))
    }

    /// Pings several appliances, at most [`PING_CONCURRENCY`] at a time; each answer or
    /// problem in the order given. Statuses are kept in one write at the end.
    pub async fn ping_many(&self, ids: &[String], check: Check) -> Value {
        use futures_util::StreamExt;
        let known: std::collections::HashMap<String, Appliance> =
            match self.store.appliances(false).await {
                Ok(all) => all.into_iter().map(|a| (a.id.clone(), a)).collect(),
                Err(e) => {
                    let problem = FleetError::from(e).problem();
                    let results: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"id": id, "reachable": false, "problem": problem}))
                        .collect();
                    return json!({"targets": ids.len(), "reachable": 0, "results": results});
                }
            };
        let probes: Vec<_> = ids
            .iter()
            .map(|id| {
                let appliance = known.get(id);
                async move {
                    match appliance {
                        Some(a) => self.probe(a, check).await,
                        None => Err(FleetError::NotFound),
                    }
                }
            })
            .collect();
        let outcomes: Vec<_> = futures_util::stream::iter(probes)
            .buffered(PING_CONCURRENCY)
            .collect()
            .await;
        let mut statuses = Vec::new();
        let mut results = Vec::with_capacity(outcomes.len());
        for (id, outcome) in ids.iter().zip(outcomes) {
            match outcome {
                Ok((answer, status)) => {
                    if let Some(s) = status {
                        statuses.push((id.clone(), s));
                    }
                    results.push(answer);
                }
                Err(e) => {
                    results.push(json!({"id": id, "reachable": false, "problem": e.problem()}))
                }
            }
        }
        if let Err(e) = self.store.record_statuses(&statuses).await {
            tracing::error!(error = %e, "cannot keep the polled statuses");
        }
        let reachable = results
            .iter()
            .filter(|r| r["reachable"] == Value::Bool(true))
            .count();
        json!({"targets": results.len(), "reachable": reachable, "results": results})
    }

    // ---- tasks ----

    pub async fn queue(
        &self,
        kind: &str,
        appliance_id: Option<&str>,
        owner_id: &str,
        request: Value,
    ) -> Result<String, FleetError> {
        let id = self
            .store
            .queue_task(
                &NewTask {
                    kind,
                    appliance_id,
                    owner_id,
                    request: with_actor(request).to_string(),
                },
                crate::certs::now_unix(),
            )
            .await
            .map_err(task_conflict)?;
        self.task_queued();
        Ok(id)
    }

    /// One worker: claims and runs tasks until the controller stops.
    pub async fn worker(self: Arc<Self>) {
        loop {
            let now = crate::certs::now_unix();
            match self
                .store
                .claim_task(&self.lease_owner, now, now + LEASE_SECS)
                .await
            {
                Ok(Some(task)) => self.run_claimed(task).await,
                Ok(None) => {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), self.queued.notified())
                            .await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim a task");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn run_claimed(&self, task: Task) {
        let outcome = if task.attempts > MAX_TASK_ATTEMPTS {
            Err(FleetError::Internal(format!(
                "interrupted {} times by controllers that stopped; not retried",
                task.attempts - 1
            )))
        } else {
            if task.attempts > 1 {
                tracing::info!(task = %task.id, kind = %task.kind, attempt = task.attempts, "resuming an interrupted task");
            }
            // The steps' events name the user who asked for the task, if one did.
            let actor = serde_json::from_str::<Value>(&task.request)
                .ok()
                .and_then(|r| r["actor"].as_str().map(String::from));
            acting_as(actor, self.run_task(&task)).await
        };
        let now = crate::certs::now_unix();
        let (state, result, problem) = match &outcome {
            Ok(v) => ("succeeded", Some(v.to_string()), None),
            Err(e) => {
                if let FleetError::Internal(detail) = e {
                    tracing::error!(task = %task.id, error = %detail, "task failed");
                } else {
                    tracing::warn!(task = %task.id, kind = %task.kind, error = %e, "task failed");
                }
                ("failed", None, Some(e.problem().to_string()))
            }
        };
        match self
            .store
            .finish_task(
                &task.id,
                &self.lease_owner,
                state,
                result.as_deref(),
                problem.as_deref(),
                now,
            )
            .await
        {
            Ok(true) => {
                tracing::info!(task = %task.id, kind = %task.kind, state, "task finished")
            }
            Ok(false) => {
                tracing::warn!(task = %task.id, "task lease lost before it finished")
            }
            Err(e) => tracing::error!(task = %task.id, error = %e, "cannot record a task result"),
        }
    }

    async fn run_task(&self, task: &Task) -> Result<Value, FleetError> {
        let request: Value = serde_json::from_str(&task.request).unwrap_or(Value::Null);
        let appliance_id = task.appliance_id.clone().unwrap_or_default();
        match task.kind.as_str() {
            "create" => self.provision(&appliance_id).await,
            "start" => {
                let backend = self.backend.clone();
                let id = appliance_id.clone();
                blocking(move || backend.start(&id)).await?;
                self.view(&appliance_id).await
            }
            "stop" => self.stop(&appliance_id).await,
            "suspend" | "resume" => {
                let (event, signal) = if task.kind == "suspend" {
                    (Event::Suspend, nix::sys::signal::Signal::SIGSTOP)
                } else {
                    (Event::Resume, nix::sys::signal::Signal::SIGCONT)
                };
                let a = self.appliance(&appliance_id).await?;
                lifecycle::next(a.state, event).ok_or_else(|| illegal(&a, event))?;
                let backend = self.backend.clone();
                let id = appliance_id.clone();
                blocking(move || backend.signal_all(&id, signal)).await?;
                let now = crate::certs::now_unix();
                // Heartbeats were not expected while suspended.
                self.apply(
                    &appliance_id,
                    event,
                    |_| Changes {
                        last_heartbeat_at: (event == Event::Resume).then_some(now),
                        ..Changes::default()
                    },
                    None,
                )
                .await?;
                self.view(&appliance_id).await
            }
            "destroy" => self.destroy(&appliance_id).await,
            "rotate-certificate" => self.rotate(&appliance_id).await,
            "ping" => {
                let targets: Vec<String> = request["targets"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let check: Check =
                    serde_json::from_value(request["check"].clone()).unwrap_or_default();
                if request["single"] == Value::Bool(true) && targets.len() == 1 {
                    let a = self.appliance(&targets[0]).await?;
                    self.ping(&a, check).await
                } else {
                    Ok(self.ping_many(&targets, check).await)
                }
            }
            other => Err(FleetError::Internal(format!("unknown task kind {other:?}"))),
        }
    }

    pub async fn view(&self, id: &str) -> Result<Value, FleetError> {
        Ok(appliance_view(&self.appliance(id).await?))
    }

    /// The create task: a slot and address, a certificate, the files, the process. Each
    /// step is skipped when already done, so a resumed task never does anything twice.
    async fn provision(&self, id: &str) -> Result<Value, FleetError> {
        let a = self.appliance(id).await?;
        match a.state {
            State::Requested => {
                self.apply(id, Event::Provision, |_| Changes::default(), None)
                    .await?;
            }
            State::Provisioning => {}
            // Done before the controller was interrupted.
            _ if a.cert_serial.is_some() => return self.view(id).await,
            _ => return Err(illegal(&a, Event::Provision)),
        }
        match self.provision_steps(id).await {
            Ok(()) => self.view(id).await,
            Err(e) => {
                let detail = json!({"problem": e.problem()});
                if let Err(e2) = self
                    .apply(
                        id,
                        Event::ProvisionFailed,
                        |_| Changes::default(),
                        Some(detail),
                    )
                    .await
                {
                    tracing::error!(appliance = id, error = %e2, "cannot record the failure");
                }
                Err(e)
            }
        }
    }

    async fn provision_steps(&self, id: &str) -> Result<(), FleetError> {
        let mut a = self.appliance(id).await?;
        if a.slot.is_none() {
            a = self.allocate_slot(id).await?;
        }
        let address: IpAddr = a
            .address
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| FleetError::Internal(format!("appliance {id} has no address")))?;
        let slot = a.slot.unwrap_or_default();
        let config_written = self.backend.dir(id).join("agent.toml").exists();
        if a.cert_serial.is_none() || !config_written {
            let (ca, backend, id2) = (self.ca.clone(), self.backend.clone(), id.to_string());
            let issued = blocking(move || {
                let issued = ca
                    .issue_appliance(&id2, &address.to_string())
                    .map_err(|e| e.to_string())?;
                backend
                    .provision(&id2, slot, address, &issued)
                    .map_err(|e| format!("cannot write the appliance's files: {e}"))?;
                Ok::<_, String>(issued)
            })
            .await?;
            let (serial, not_after) = (issued.serial.clone(), issued.not_after.unix_timestamp());
            self.apply(
                id,
                Event::Provision,
                |_| Changes {
                    cert_serial: Some(serial.clone()),
                    cert_not_after: Some(not_after),
                    ..Changes::default()
                },
                None,
            )
            .await?;
        }
        let backend = self.backend.clone();
        let id2 = id.to_string();
        let pid = blocking(move || backend.start(&id2)).await?;
        self.apply(
            id,
            Event::Spawned,
            |_| Changes::default(),
            Some(json!({"pid": pid, "address": address.to_string()})),
        )
        .await?;
        Ok(())
    }

    /// Gives the appliance the lowest free loopback slot.
    async fn allocate_slot(&self, id: &str) -> Result<Appliance, FleetError> {
        for _ in 0..10 {
            let used = self.store.used_slots().await?;
            let slot = (0..i64::from(self.config.backend.max_appliances))
                .find(|s| !used.contains(s))
                .ok_or_else(|| {
                    FleetError::NoCapacity(format!(
                        "all {} appliance slots are in use",
                        self.config.backend.max_appliances
                    ))
                })?;
            let address = self
                .backend
                .address(slot)
                .ok_or_else(|| FleetError::NoCapacity("no loopback address left".into()))?;
            let port = i64::from(self.config.backend.agent_port);
            match self
                .apply(
                    id,
                    Event::Provision,
                    |_| Changes {
                        slot: Some(slot),
                        address: Some(address.to_string()),
                        agent_port: Some(port),
                        ..Changes::default()
                    },
                    None,
                )
                .await
            {
                Ok(a) => return Ok(a),
                // Taken by a concurrent create: try the next one.
                Err(FleetError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(FleetError::NoCapacity(
            "could not reserve an appliance slot".into(),
        ))
    }

    async fn stop(&self, id: &str) -> Result<Value, FleetError> {
        let backend = self.backend.clone();
        let id2 = id.to_string();
        blocking(move || backend.stop(&id2)).await?;
        let a = self.appliance(id).await?;
        // The appliance's own `stopped` usually arrives first; otherwise the backend's
        // word that the processes are gone confirms it.
        if a.state != State::Stopped {
            self.apply(
                id,
                Event::StoppedCallback,
                |_| Changes::default(),
                Some(json!({"reported_by": "backend"})),
            )
            .await?;
        }
        self.view(id).await
    }

    async fn destroy(&self, id: &str) -> Result<Value, FleetError> {
        let a = self.appliance(id).await?;
        if a.state == State::Deleted {
            return self.view(id).await;
        }
        if let Some(serial) = a.cert_serial.clone() {
            let ca = self.ca.clone();
            blocking(move || ca.revoke(&serial).map_err(|e| e.to_string())).await?;
            (self.on_revoke)();
        }
        let backend = self.backend.clone();
        let id2 = id.to_string();
        blocking(move || backend.destroy(&id2)).await?;
        self.apply(
            id,
            Event::Destroyed,
            |_| Changes::default(),
            Some(json!({"certificate_revoked": a.cert_serial})),
        )
        .await?;
        self.view(id).await
    }

    /// A new certificate for the appliance, pushed with the agent's `PUT /certificate`.
    async fn rotate(&self, id: &str) -> Result<Value, FleetError> {
        let a = self.appliance(id).await?;
        lifecycle::next(a.state, Event::RotateCertificate)
            .ok_or_else(|| illegal(&a, Event::RotateCertificate))?;
        let address = a.address.clone().unwrap_or_default();
        let (ca, id2) = (self.ca.clone(), id.to_string());
        let issued = blocking(move || {
            ca.issue_appliance(&id2, &address)
                .map_err(|e| e.to_string())
        })
        .await?;
        let reply = self
            .call_agent(
                &a,
                Method::PUT,
                "/certificate",
                HeaderMap::new(),
                Bytes::from(ca::bundle(&issued)),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(FleetError::BadGateway(format!(
                "the agent refused the new certificate: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )));
        }
        let (serial, not_after) = (issued.serial.clone(), issued.not_after.unix_timestamp());
        self.apply(
            id,
            Event::RotateCertificate,
            |_| Changes {
                cert_serial: Some(serial.clone()),
                cert_not_after: Some(not_after),
                ..Changes::default()
            },
            Some(json!({"serial": serial, "previous_serial": a.cert_serial})),
        )
        .await?;
        self.view(id).await
    }

    // ---- timers ----

    fn timers(&self) -> Timers {
        let a = &self.config.appliances;
        let secs = |d: crate::config::HumanDuration| {
            i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX).max(1)
        };
        Timers {
            warning_before: EXPIRY_WARNING_SECS,
            launch_timeout: secs(a.launch_timeout),
            heartbeat_interval: secs(a.heartbeat_interval),
            missed_heartbeats: i64::from(a.missed_heartbeats),
            stop_timeout: secs(a.stop_timeout),
            rotate_before: i64::from(self.config.pki.rotate_before_days) * 86_400,
        }
    }

    /// Looks at every appliance with a running clock once a second.
    pub async fn timers_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.timers_once().await {
                tracing::error!(error = %e, "timers");
            }
        }
    }

    async fn timers_once(&self) -> Result<(), FleetError> {
        let now = crate::certs::now_unix();
        let timers = self.timers();
        for (id, owner, clock) in self.store.timed_clocks().await? {
            let result = match lifecycle::due(&clock, now, &timers) {
                None => Ok(()),
                Some(Due::Rotate) => self
                    .queue("rotate-certificate", Some(&id), &owner, json!({}))
                    .await
                    .map(|_| ()),
                // The stop is queued with the move: if another operation still runs,
                // neither happens and the next tick tries again.
                Some(Due::Event(Event::Expired)) => self
                    .apply_and_queue(
                        &id,
                        Event::Expired,
                        "stop",
                        &owner,
                        json!({"reason": "expired"}),
                    )
                    .await
                    .map(|_| ()),
                Some(Due::Event(event)) => {
                    let detail = match event {
                        Event::ExpiryWarning => clock
                            .expires_at
                            .map(|e| json!({"expires_at": crate::certs::format_unix(e)})),
                        _ => None,
                    };
                    self.apply(&id, event, |_| Changes::default(), detail)
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) | Err(FleetError::Conflict(_)) => {}
                Err(e) => tracing::warn!(appliance = %id, error = %e, "timer"),
            }
        }
        Ok(())
    }

    // ---- leases ----

    /// Keeps this controller's leases alive.
    pub async fn leases_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(LEASE_SECS as u64 / 3));
        loop {
            tick.tick().await;
            let until = crate::certs::now_unix() + LEASE_SECS;
            if let Err(e) = self.store.renew_leases(&self.lease_owner, until).await {
                tracing::error!(error = %e, "cannot renew task leases");
            }
        }
    }

    /// Frees the leases of controllers on this host that are gone, so that a restart
    /// after `kill -9` resumes their tasks at once (elsewhere leases simply expire).
    pub async fn free_dead_leases(&self) {
        let Ok(owners) = self.store.lease_owners().await else {
            return;
        };
        let (host, _) = self.lease_owner.split_once('/').unwrap_or_default();
        for owner in owners {
            let mut parts = owner.splitn(3, '/');
            let (Some(h), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let gone = owner != self.lease_owner
                && h == host
                && (pid == std::process::id() as i32
                    || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err());
            if gone && let Ok(n) = self.store.expire_leases(&owner).await {
                tracing::info!(previous = %owner, tasks = n, "resuming tasks of a controller that stopped");
            }
        }
    }

    // ---- webhooks ----

    pub async fn webhooks_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = crate::certs::now_unix();
            let due = match self.store.due_deliveries(now, 64).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks");
                    continue;
                }
            };
            let lease = now + self.config.webhooks.timeout.0.as_secs() as i64 + 5;
            let mut sends = Vec::new();
            for d in due {
                if matches!(self.store.claim_delivery(&d, lease).await, Ok(true)) {
                    sends.push(self.deliver(d));
                }
            }
            futures_util::future::join_all(sends).await;
        }
    }

    /// The signature of a delivery: HMAC-SHA256 over `TIMESTAMP.BODY`, hex.
    pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("sha256={}", crate::certs::hex(ctx.sign().as_ref()))
    }

    async fn deliver(&self, d: super::records::Delivery) {
        let now = crate::certs::now_unix();
        let mut headers = json_headers();
        let event: Value = serde_json::from_str(&d.body).unwrap_or(Value::Null);
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        set("x-applianced-delivery", d.id.clone());
        set(
            "x-applianced-event",
            event["event"].as_str().unwrap_or("").to_string(),
        );
        set("x-applianced-timestamp", now.to_string());
        set(
            "x-applianced-signature",
            Self::signature(&self.secret, now, d.body.as_bytes()),
        );
        // The allowed hosts may have changed since the appliance was created.
        let allowed = d
            .url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| self.config.webhooks.allows(h)))
            .unwrap_or(false);
        let (status, error) = if !allowed {
            (
                None,
                Some("the callback host is not in webhooks.allowed_hosts".to_string()),
            )
        } else {
            let outcome = self
                .hooks
                .send(Method::POST, &d.url, headers, Bytes::from(d.body.clone()))
                .await;
            match &outcome {
                Ok(r) if r.status.is_success() => (Some(i64::from(r.status.as_u16())), None),
                Ok(r) => (
                    Some(i64::from(r.status.as_u16())),
                    Some(format!("answered {}", r.status)),
                ),
                Err(e) => (None, Some(e.to_string())),
            }
        };
        let attempts = d.attempts + 1;
        let state = if error.is_none() {
            "delivered"
        } else if !allowed || attempts >= i64::from(self.config.webhooks.max_attempts) {
            "failed"
        } else {
            "pending"
        };
        let next = now + (1i64 << attempts.min(8)).min(300);
        if let Some(e) = &error {
            tracing::warn!(delivery = %d.id, url = %d.url, attempt = attempts, error = %e, "webhook not delivered");
        }
        if let Err(e) = self
            .store
            .delivery_attempted(&d.id, state, status, error.as_deref(), next, now)
            .await
        {
            tracing::error!(delivery = %d.id, error = %e, "cannot record a delivery");
        }
    }
}

/// The API's view of an appliance.
pub fn appliance_view(a: &Appliance) -> Value {
    let time = |t: Option<i64>| t.map(crate::certs::format_unix);
    json!({
        "id": a.id,
        "name": a.name,
        "external_id": a.external_id,
        "state": a.state.as_str(),
        "state_since": crate::certs::format_unix(a.state_since),
        "ttl_minutes": a.ttl_minutes,
        "callback_url": a.callback_url,
        "address": a.address,
        "agent_url": a.address.as_ref().and_then(|_| Fleet::agent_url(a, "/").ok()),
        "certificate": {
            "serial": a.cert_serial,
            "not_after": time(a.cert_not_after),
        },
        "launched_at": time(a.launched_at),
        "expires_at": time(a.expires_at),
        "last_heartbeat_at": time(a.last_heartbeat_at),
        "last_status": a.last_status.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()),
        "owner_id": a.owner_id,
        "created_at": crate::certs::format_unix(a.created_at),
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, FleetError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(FleetError::BadGateway(format!("backend: {e}"))),
        Err(e) => Err(FleetError::Internal(e.to_string())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        // RFC 4231 test case 2 ("Jefe"), with the message split as TIMESTAMP "." BODY.
        let sig = Fleet::signature(b"Jefe", 0, b"");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let expected = hmac::sign(&key, b"1700000000.{\"a\":1}");
        assert_eq!(
            Fleet::signature(b"Jefe", 1_700_000_000, b"{\"a\":1}"),
            format!("sha256={}", crate::certs::hex(expected.as_ref()))
        );
    }
}
