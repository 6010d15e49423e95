//! What operators ask of the fleet, whoever serves them: creating, listing, acting on
//! and pinging appliances, reading their events and tasks, reaching their agents. Every
//! rule of the northbound API lives here; visibility included (what a caller cannot see
//! does not exist for it).

use super::ids::{ApplianceId, TaskId};
use super::teams::Principal;
use super::*;
use crate::controller::auth;
use crate::controller::records::{Created, Delivery, EventRecord};
use crate::controller::teams::TeamRole;

/// Default time-to-live when the request names none, within the configured range.
pub const DEFAULT_TTL_MINUTES: u32 = 60;
/// Most targets one ping may name.
pub const MAX_PING_TARGETS: usize = 10_000;
/// Most tasks one list shows.
const MAX_LISTED_TASKS: i64 = 500;

/// A create request as the caller sent it; its canonical form (defaults filled in) is
/// the idempotency key with `external_id`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CreateRequest {
    /// The team, by id or name (default: the caller's only team); its id once resolved.
    pub team: Option<String>,
    pub name: String,
    pub ttl_minutes: Option<u32>,
    pub external_id: Option<String>,
    pub callback_url: Option<String>,
    pub template: Option<String>,
    /// A key pair of the team, by id or name; its id once resolved.
    pub keypair: Option<String>,
    /// Or, instead of a template: an image, a flavor and a network, by id or name.
    pub image: Option<String>,
    pub flavor: Option<String>,
    pub network: Option<String>,
    /// A region by name; default: the template's, or placement's choice.
    pub region: Option<String>,
    /// Where its `launched`, `expiring` and `stopped` events are mailed.
    pub notify_email: Option<String>,
    /// A cluster of the team to join, by id or name; its id once resolved.
    pub cluster: Option<String>,
    /// The backend that makes it, by name (absent from the canonical form when not
    /// given, as before there were several).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// Filters of a list.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub state: Option<String>,
    pub name: Option<String>,
    pub external_id: Option<String>,
}

/// A queued task, with the appliance it concerns as it is now.
pub struct Queued {
    pub task: Task,
    pub appliance: Option<Appliance>,
}

/// The outcome of an action: queued, or (`extend`) done at once.
pub enum ActionOutcome {
    Queued(Box<Queued>),
    Extended(Box<Appliance>),
}

/// The outcome of a ping: answered, or queued as a task.
pub enum PingOutcome {
    Done(Value),
    Queued(Task),
}

/// A method the pass-through forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMethod {
    Get,
    Put,
    Post,
    Delete,
}

/// A request for an appliance's agent, as the controller.
pub struct AgentRequest {
    pub method: AgentMethod,
    /// Path and query, starting with `/`.
    pub path: String,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub body: Bytes,
}

/// The agent's answer, as it came.
pub struct AgentAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

fn invalid(msg: impl Into<String>) -> FleetError {
    FleetError::Invalid(msg.into())
}

/// The name of something the fleet keeps (an appliance, a key pair, a cluster).
pub(super) fn check_name(name: &str) -> Result<(), FleetError> {
    if auth::is_plain_name(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "name {name:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// The host of an absolute http or https URL.
pub fn callback_host(url: &str) -> Option<String> {
    url.split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
        .and_then(|(_, rest)| url_host(rest))
        .filter(|_| !url.chars().any(|c| c.is_control() || c == ' '))
}

fn check_callback_url(
    url: &str,
    hooks: &crate::config::controller::Webhooks,
) -> Result<(), FleetError> {
    match callback_host(url) {
        None => Err(invalid(format!(
            "callback_url {url:?}: an absolute http or https URL"
        ))),
        Some(host) if !hooks.allows(&host) => Err(invalid(format!(
            "callback_url {url:?}: host {host} is not in webhooks.allowed_hosts"
        ))),
        Some(_) => Ok(()),
    }
}

/// The host of what follows `scheme://`: a name, an IPv4 address, or a bracketed IPv6
/// address (returned without brackets, as URIs report it).
fn url_host(rest: &str) -> Option<String> {
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, tail) = v6.split_once(']')?;
        if !(tail.is_empty() || tail.starts_with(':')) {
            return None;
        }
        format!("[{addr}]")
    } else {
        authority.split(':').next()?.to_string()
    };
    (!host.is_empty()).then_some(host)
}

impl Fleet {
    /// The appliance `id`, if the caller may see it.
    pub async fn visible(
        &self,
        caller: &Principal,
        id: &ApplianceId,
    ) -> Result<Appliance, FleetError> {
        match self.store.appliance(id.as_str()).await? {
            Some(a) if caller.sees(&a.team_id) => Ok(a),
            _ => Err(FleetError::NotFound),
        }
    }

    /// The appliances the caller sees; deleted ones only when the filter asks for them.
    pub async fn list(
        &self,
        caller: &Principal,
        f: ListFilter,
    ) -> Result<Vec<Appliance>, FleetError> {
        if let Some(s) = &f.state
            && State::parse(s).is_none()
        {
            return Err(invalid(format!("state {s:?} is not a lifecycle state")));
        }
        let deleted = f.state.as_deref() == Some("deleted");
        Ok(self
            .store
            .appliances(deleted)
            .await?
            .into_iter()
            .filter(|a| caller.sees(&a.team_id))
            .filter(|a| f.state.as_ref().is_none_or(|s| a.state.as_str() == s))
            .filter(|a| f.name.as_ref().is_none_or(|n| &a.name == n))
            .filter(|a| {
                f.external_id
                    .as_ref()
                    .is_none_or(|e| a.external_id.as_ref() == Some(e))
            })
            .collect())
    }

    /// Records a new appliance and queues its create task; the same `external_id` with
    /// the same request is the same task, with another request a conflict.
    pub async fn create(
        &self,
        caller: &Principal,
        mut body: CreateRequest,
    ) -> Result<Queued, FleetError> {
        let now = self.clock.now();
        check_name(&body.name)?;
        let (min, max) = self.ttl_range();
        let ttl = body
            .ttl_minutes
            .unwrap_or(DEFAULT_TTL_MINUTES.clamp(min, max));
        if !(min..=max).contains(&ttl) {
            return Err(invalid(format!(
                "ttl_minutes {ttl}: allowed range is {min}..{max}"
            )));
        }
        body.ttl_minutes = Some(ttl);
        if let Some(e) = &body.external_id
            && (e.is_empty() || e.len() > 128 || e.chars().any(char::is_control))
        {
            return Err(invalid("external_id: 1 to 128 printable characters"));
        }
        if let Some(url) = &body.callback_url {
            check_callback_url(url, self.webhooks())?;
        }
        if let Some(email) = &body.notify_email {
            super::users::check_email(email)
                .map_err(|e| invalid(e.to_string().replacen("email", "notify_email", 1)))?;
            if self.mailer.is_none() {
                return Err(invalid(
                    "notify_email: this controller has no SMTP server ([smtp])",
                ));
            }
        }
        let team = self
            .team_for(caller, body.team.as_deref(), "create appliances")
            .await?;
        body.team = Some(team.id.clone());
        let keypair = match &body.keypair {
            Some(k) => Some(self.keypair_for_create(&team.id, k).await?),
            None => None,
        };
        body.keypair = keypair.as_ref().map(|k| k.id.clone());
        let cluster = match &body.cluster {
            Some(c) => Some(self.cluster_for_create(&team.id, c).await?),
            None => None,
        };
        body.cluster = cluster.as_ref().map(|c| c.id.clone());
        let make = self.resolve_make(
            caller,
            body.backend.as_deref(),
            body.template.as_deref(),
            [
                body.image.as_deref(),
                body.flavor.as_deref(),
                body.network.as_deref(),
            ],
            body.region.as_deref(),
        )?;
        body.template.clone_from(&make.template);
        let backend = self
            .backend_named(&make.backend)
            .ok_or_else(|| FleetError::Internal(format!("backend {} vanished", make.backend)))?;
        if !backend.capabilities().create {
            return Err(FleetError::Unsupported(format!(
                "the {} backend cannot create appliances",
                make.backend
            )));
        }
        let canonical = serde_json::to_string(&body).unwrap_or_default();
        let hash = auth::token_hash(&format!("{}\n{canonical}", caller.id));
        // The same request again (a retry) gets its task back, whatever the quotas and
        // places say now.
        if let Some(external) = &body.external_id
            && let Some(existing) = self
                .store
                .appliance_by_external_id(&team.id, external)
                .await?
        {
            return self.same_request(existing, &hash, external).await;
        }
        self.check_minutes(&team).await?;
        let appliance = Appliance {
            id: auth::new_id(),
            name: body.name.clone(),
            team_id: team.id.clone(),
            owner_id: caller.id.clone(),
            external_id: body.external_id.clone(),
            request_hash: hash.clone(),
            state: State::Requested,
            state_since: now,
            ttl_minutes: i64::from(ttl),
            callback_url: body.callback_url.clone(),
            slot: None,
            address: None,
            agent_port: None,
            cert_serial: None,
            cert_not_after: None,
            launched_at: None,
            expires_at: None,
            last_heartbeat_at: None,
            last_status: None,
            created_at: now,
            keypair_id: keypair.as_ref().map(|k| k.id.clone()),
            authorized_key: keypair.map(|k| k.public_key),
            template: make.template.clone(),
            image: Some(make.image.clone()),
            flavor: Some(make.flavor.clone()),
            network: Some(make.network.clone()),
            region: None,
            notify_email: body.notify_email.clone(),
            cluster_id: cluster.as_ref().map(|c| c.id.clone()),
            backend: make.backend.clone(),
            public_key: None,
        };
        let mut request: Value = serde_json::from_str(&canonical).unwrap_or_default();
        request["actor"] = Value::String(caller.name.clone());
        let new_task = NewTask {
            kind: TaskKind::Create,
            appliance_id: Some(&appliance.id),
            owner_id: &caller.id,
            request: request.to_string(),
            team_id: None,
        };
        match self
            .store
            .create_appliance(&appliance, &make.regions, &new_task, Some(&caller.name))
            .await
        {
            Ok(Created::OverQuota { limit, used }) => Err(FleetError::QuotaExceeded {
                quota: "max_appliances",
                limit,
                used,
            }),
            Ok(Created::NoSuchTeam) => Err(FleetError::NoSuchTeam),
            Ok(Created::NoSuchCluster) => Err(FleetError::Conflict(
                "the cluster is being deleted: no appliance joins it".into(),
            )),
            Ok(Created::ClusterFull { size }) => Err(FleetError::Conflict(format!(
                "the cluster already has the {size} appliance(s) its topology holds"
            ))),
            Ok(Created::NoRoom) => Err(FleetError::NoCapacity(match make.regions.as_slice() {
                [(only, _)] => format!("region {only} has no room"),
                _ => "no region has room".into(),
            })),
            Ok(Created::Queued { task_id, region }) => {
                self.task_queued();
                let task = self.queued_task(&task_id).await?;
                let mut appliance = appliance;
                appliance.region = Some(region);
                Ok(Queued {
                    task,
                    appliance: Some(appliance),
                })
            }
            Err(StoreError::Conflict(_)) => {
                // The same key was taken meanwhile: the same request gets its task.
                let external = body.external_id.as_deref().unwrap_or_default();
                let existing = self
                    .store
                    .appliance_by_external_id(&team.id, external)
                    .await?
                    .ok_or_else(|| {
                        FleetError::Internal("external_id conflict without a row".into())
                    })?;
                self.same_request(existing, &hash, external).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The idempotency key: the same request again gets the same task; another request
    /// with the key is a conflict.
    async fn same_request(
        &self,
        existing: Appliance,
        hash: &str,
        external: &str,
    ) -> Result<Queued, FleetError> {
        if existing.request_hash != hash {
            return Err(FleetError::Conflict(format!(
                "external_id {external:?} was used with another request"
            )));
        }
        let task = self
            .store
            .create_task_of(&existing.id)
            .await?
            .ok_or_else(|| FleetError::Internal("appliance without create task".into()))?;
        Ok(Queued {
            task,
            appliance: Some(existing),
        })
    }

    async fn queued_task(&self, id: &str) -> Result<Task, FleetError> {
        self.store
            .task(id)
            .await?
            .ok_or_else(|| FleetError::Internal(format!("task {id} vanished")))
    }

    /// `DELETE`: queues the destroy task.
    pub async fn delete(&self, caller: &Principal, id: &ApplianceId) -> Result<Queued, FleetError> {
        let a = self.visible(caller, id).await?;
        caller.needs(&a.team_id, TeamRole::Member, "delete appliances")?;
        acting_as(
            Some(caller.name.clone()),
            self.queue_action(caller, &a, Event::Destroy, json!({"action": "destroy"})),
        )
        .await
    }

    /// An action by name (`start`, `stop`, `suspend`, `resume`, `destroy`,
    /// `rotate-certificate`: queued; `extend` with `minutes`: done at once).
    pub async fn act(
        &self,
        caller: &Principal,
        id: &ApplianceId,
        action: &str,
        minutes: Option<u32>,
    ) -> Result<ActionOutcome, FleetError> {
        let a = self.visible(caller, id).await?;
        caller.needs(&a.team_id, TeamRole::Member, "act on appliances")?;
        let event = Event::action(action).ok_or_else(|| {
            invalid(format!(
                "action {action:?}: start (or on), stop (or off), suspend, resume, extend, destroy or rotate-certificate"
            ))
        })?;
        // What makes an appliance run (longer) needs minutes left this month.
        if matches!(event, Event::Start | Event::Resume | Event::Extend)
            && let Some(team) = self.store.team(&a.team_id).await?
        {
            self.check_minutes(&team).await?;
        }
        // The moves and tasks this causes are recorded as the user's.
        let actor = Some(caller.name.clone());
        if event == Event::Extend {
            return acting_as(actor, self.extend(&a, minutes))
                .await
                .map(|a| ActionOutcome::Extended(Box::new(a)));
        }
        if minutes.is_some() {
            return Err(invalid("minutes is only for extend"));
        }
        let backend = self.backend_of(&a)?;
        if let Some(machine) = machine_action(event)
            && !machine.supported_by(backend.capabilities())
        {
            return Err(FleetError::Unsupported(format!(
                "the {} backend cannot {} appliances",
                backend.name(),
                machine.name()
            )));
        }
        acting_as(
            actor,
            self.queue_action(caller, &a, event, json!({"action": action})),
        )
        .await
        .map(|q| ActionOutcome::Queued(Box::new(q)))
    }

    /// Checks the move is allowed now, queues the task (one per appliance at a time),
    /// and for `start` and `stop` moves the appliance at once (`booting`, `stopping`).
    async fn queue_action(
        &self,
        caller: &Principal,
        a: &Appliance,
        event: Event,
        request: Value,
    ) -> Result<Queued, FleetError> {
        if lifecycle::next(a.state, event).is_none() {
            return Err(illegal(a, event));
        }
        let kind = task_for(event)
            .ok_or_else(|| FleetError::Internal(format!("{} queues no task", event.name())))?;
        let task_id = if matches!(event, Event::Start | Event::Stop) {
            // Moved and queued in one transaction: the task cannot run (and the
            // appliance cannot report `launched` or `stopped`) before the move is recorded.
            self.apply_and_queue(&a.id, event, kind, &caller.id, request)
                .await?
        } else {
            self.queue(kind, Some(&a.id), &caller.id, request).await?
        };
        let task = self.queued_task(&task_id).await?;
        Ok(Queued {
            task,
            appliance: Some(self.appliance(&a.id).await?),
        })
    }

    /// `extend`: more minutes, capped at the maximum time-to-live since `launched`.
    async fn extend(&self, a: &Appliance, minutes: Option<u32>) -> Result<Appliance, FleetError> {
        let minutes = minutes
            .filter(|m| *m > 0)
            .ok_or_else(|| invalid("extend needs minutes (at least 1)"))?;
        if lifecycle::next(a.state, Event::Extend).is_none() {
            return Err(illegal(a, Event::Extend));
        }
        let (Some(launched), Some(expires)) = (a.launched_at, a.expires_at) else {
            return Err(FleetError::Conflict(
                "the appliance has not launched yet".into(),
            ));
        };
        let cap = launched + i64::from(self.ttl_range().1) * 60;
        let wanted = expires + i64::from(minutes) * 60;
        if expires >= cap {
            return Err(FleetError::Conflict(format!(
                "already at the maximum time-to-live of {} minutes",
                self.ttl_range().1
            )));
        }
        let new = wanted.min(cap);
        self.apply(
            &a.id,
            Event::Extend,
            |_| Changes {
                expires_at: Some(new),
                ..Default::default()
            },
            Some(json!({
                "minutes": minutes,
                "expires_at": crate::certs::format_unix(new),
                "capped": new < wanted,
            })),
        )
        .await
    }

    /// The events of an appliance, oldest first, each with its webhook deliveries.
    pub async fn events(
        &self,
        caller: &Principal,
        id: &ApplianceId,
    ) -> Result<Vec<(EventRecord, Vec<Delivery>)>, FleetError> {
        let a = self.visible(caller, id).await?;
        Ok(self.store.events(&a.id).await?)
    }

    /// Pings one appliance, or queues the ping.
    pub async fn ping_one(
        &self,
        caller: &Principal,
        id: &ApplianceId,
        check: Check,
        asynchronous: bool,
    ) -> Result<PingOutcome, FleetError> {
        let a = self.visible(caller, id).await?;
        if asynchronous {
            let request = json!({"targets": [a.id], "single": true, "check": check.name()});
            let id = acting_as(
                Some(caller.name.clone()),
                self.queue(TaskKind::Ping, None, &caller.id, request),
            )
            .await?;
            return Ok(PingOutcome::Queued(self.queued_task(&id).await?));
        }
        Ok(PingOutcome::Done(self.ping(&a, check).await?))
    }

    /// Pings the named appliances (every one must be visible), or by default every
    /// running one the caller sees; or queues the ping.
    pub async fn ping_targets(
        &self,
        caller: &Principal,
        targets: Option<Vec<String>>,
        check: Check,
        asynchronous: bool,
    ) -> Result<PingOutcome, FleetError> {
        // One read of the fleet, whether targets are named or not.
        let mine: Vec<Appliance> = self
            .store
            .appliances(false)
            .await?
            .into_iter()
            .filter(|a| caller.sees(&a.team_id))
            .collect();
        let targets = match targets {
            Some(targets) => {
                if targets.is_empty() || targets.len() > MAX_PING_TARGETS {
                    return Err(invalid(format!(
                        "targets: 1 to {MAX_PING_TARGETS} appliance ids"
                    )));
                }
                let known: std::collections::HashSet<&str> =
                    mine.iter().map(|a| a.id.as_str()).collect();
                if let Some(id) = targets.iter().find(|id| !known.contains(id.as_str())) {
                    return Err(invalid(format!(
                        "target {id:?} is not an appliance you can see"
                    )));
                }
                targets
            }
            None => mine
                .into_iter()
                .filter(|a| a.state.is_running())
                .map(|a| a.id)
                .collect(),
        };
        if asynchronous {
            let request = json!({"targets": targets, "check": check.name()});
            let id = acting_as(
                Some(caller.name.clone()),
                self.queue(TaskKind::Ping, None, &caller.id, request),
            )
            .await?;
            return Ok(PingOutcome::Queued(self.queued_task(&id).await?));
        }
        Ok(PingOutcome::Done(self.ping_many(&targets, check).await))
    }

    /// Forwards a request to the appliance's agent, as the controller, naming the user.
    /// Configurations are code: members read, only admins write.
    pub async fn pass_through(
        &self,
        caller: &Principal,
        id: &ApplianceId,
        request: AgentRequest,
    ) -> Result<(Appliance, AgentAnswer), FleetError> {
        let a = self.visible(caller, id).await?;
        if request.method != AgentMethod::Get && !caller.admin {
            return Err(FleetError::PassThroughReadOnly);
        }
        if !a.state.is_running() {
            return Err(FleetError::Conflict(format!(
                "appliance {} is {}: its agent is not running",
                a.id,
                a.state.as_str()
            )));
        }
        let answer = self.forward(&a, request, &caller.name).await?;
        Ok((a, answer))
    }

    /// The tasks the caller may read (those it queued and those of the teams it owns;
    /// admins: all), newest first.
    pub async fn tasks(&self, caller: &Principal) -> Result<Vec<Task>, FleetError> {
        let reader = (!caller.admin).then_some(caller.id.as_str());
        Ok(self.store.tasks(reader, MAX_LISTED_TASKS).await?)
    }

    pub async fn task(&self, caller: &Principal, id: &TaskId) -> Result<Task, FleetError> {
        match self.store.task(id.as_str()).await? {
            Some(t) if caller.reads_task(&t) => Ok(t),
            _ => Err(FleetError::NoSuchTask),
        }
    }

    /// Cancels a task that is queued and has never run. Start and stop tasks moved their
    /// appliance when they were queued, so they are not cancelled (act again instead); a
    /// cancelled create leaves its appliance failed, with nothing made.
    pub async fn cancel_task(&self, caller: &Principal, id: &TaskId) -> Result<Task, FleetError> {
        let task = self.task(caller, id).await?;
        if !caller.admin && task.owner_id != caller.id {
            return Err(FleetError::Forbidden(
                "only the task's creator or an admin cancels it".into(),
            ));
        }
        let not_now = |why: &str| {
            FleetError::Conflict(format!(
                "task {} ({}) cannot be cancelled: {why}",
                task.id,
                task.kind.name()
            ))
        };
        if task.state != TaskState::Queued || task.attempts > 0 {
            return Err(not_now(&format!(
                "it is {}; only a queued task that has not run can be",
                if task.state == TaskState::Queued {
                    "queued again after an interrupted run"
                } else {
                    task.state.as_str()
                }
            )));
        }
        if matches!(task.kind, TaskKind::Start | TaskKind::Stop) {
            return Err(not_now(
                "it moved its appliance when it was queued; start or stop it again instead",
            ));
        }
        if !self.store.cancel_task(&task.id, self.clock.now()).await? {
            return Err(not_now("it started meanwhile"));
        }
        if let (TaskKind::Create, Some(appliance)) = (task.kind, &task.appliance_id) {
            let detail = json!({"cancelled_task": task.id});
            acting_as(
                Some(caller.name.clone()),
                self.apply(
                    appliance,
                    Event::ProvisionFailed,
                    |_| Changes::default(),
                    Some(detail),
                ),
            )
            .await?;
        }
        self.task(caller, id).await
    }
}

/// The backend action a lifecycle move needs, if it needs one.
fn machine_action(event: Event) -> Option<MachineAction> {
    match event {
        Event::Start => Some(MachineAction::Start),
        Event::Stop => Some(MachineAction::Stop),
        Event::Suspend => Some(MachineAction::Suspend),
        Event::Resume => Some(MachineAction::Resume),
        _ => None,
    }
}

/// The task an operator's action queues.
fn task_for(event: Event) -> Option<TaskKind> {
    match event {
        Event::Start => Some(TaskKind::Start),
        Event::Stop => Some(TaskKind::Stop),
        Event::Suspend => Some(TaskKind::Suspend),
        Event::Resume => Some(TaskKind::Resume),
        Event::Destroy => Some(TaskKind::Destroy),
        Event::RotateCertificate => Some(TaskKind::RotateCertificate),
        _ => None,
    }
}
