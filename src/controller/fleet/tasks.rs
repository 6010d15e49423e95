//! Durable tasks: queueing, the worker pool that claims them under leases, and what each kind does.

use super::*;

impl Fleet {
    pub async fn queue(
        &self,
        kind: TaskKind,
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
                    team_id: None,
                },
                self.clock.now(),
            )
            .await
            .map_err(task_conflict)?;
        self.task_queued();
        Ok(id)
    }

    /// One worker: claims and runs tasks until the controller stops.
    pub async fn worker(self: Arc<Self>) {
        loop {
            let now = self.clock.now();
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

    pub(super) async fn run_claimed(&self, task: Task) {
        let outcome = if task.attempts > MAX_TASK_ATTEMPTS {
            Err(FleetError::Internal(format!(
                "interrupted {} times by controllers that stopped; not retried",
                task.attempts - 1
            )))
        } else {
            if task.attempts > 1 {
                tracing::info!(task = %task.id, kind = task.kind.name(), attempt = task.attempts, "resuming an interrupted task");
            }
            // The steps' events name the user who asked for the task, if one did.
            let actor = serde_json::from_str::<Value>(&task.request)
                .ok()
                .and_then(|r| r["actor"].as_str().map(String::from));
            acting_as(actor, self.run_task(&task)).await
        };
        let now = self.clock.now();
        let (state, result, problem) = match &outcome {
            Ok(v) => (TaskState::Succeeded, Some(v.to_string()), None),
            Err(e) => {
                if let FleetError::Internal(detail) = e {
                    tracing::error!(task = %task.id, error = %detail, "task failed");
                } else {
                    tracing::warn!(task = %task.id, kind = task.kind.name(), error = %e, "task failed");
                }
                (TaskState::Failed, None, Some(e.problem().to_string()))
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
                tracing::info!(task = %task.id, kind = task.kind.name(), state = state.as_str(), "task finished")
            }
            Ok(false) => {
                tracing::warn!(task = %task.id, "task lease lost before it finished")
            }
            Err(e) => tracing::error!(task = %task.id, error = %e, "cannot record a task result"),
        }
    }

    pub(super) async fn run_task(&self, task: &Task) -> Result<Value, FleetError> {
        let request: Value = serde_json::from_str(&task.request).unwrap_or(Value::Null);
        let appliance_id = task.appliance_id.clone().unwrap_or_default();
        let kind = task.kind;
        match kind {
            TaskKind::Create => self.provision(&appliance_id).await,
            TaskKind::Start => {
                let backend = self.backend_of(&self.appliance(&appliance_id).await?)?;
                let id = ApplianceId::from(appliance_id.clone());
                if let Err(e) =
                    on_backend(&backend, move |b| b.action(&id, MachineAction::Start)).await
                {
                    // Nothing will launch: the appliance is failed now, with the reason.
                    let detail = json!({"problem": e.problem()});
                    if let Err(e2) = self
                        .apply(
                            &appliance_id,
                            Event::ProvisionFailed,
                            |_| Changes::default(),
                            Some(detail),
                        )
                        .await
                    {
                        tracing::warn!(appliance = %appliance_id, error = %e2, "cannot record a failed start");
                    }
                    return Err(e);
                }
                self.view(&appliance_id).await
            }
            TaskKind::Stop => self.stop(&appliance_id).await,
            TaskKind::Suspend | TaskKind::Resume => {
                let (event, action) = if kind == TaskKind::Suspend {
                    (Event::Suspend, MachineAction::Suspend)
                } else {
                    (Event::Resume, MachineAction::Resume)
                };
                let a = self.appliance(&appliance_id).await?;
                lifecycle::next(a.state, event).ok_or_else(|| illegal(&a, event))?;
                let id = ApplianceId::from(appliance_id.clone());
                on_backend(&self.backend_of(&a)?, move |b| b.action(&id, action)).await?;
                let now = self.clock.now();
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
            TaskKind::Destroy => self.destroy(&appliance_id).await,
            TaskKind::RotateCertificate => self.rotate(&appliance_id).await,
            TaskKind::Ping => {
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
            TaskKind::ClusterWrite => {
                let outcome = self.run_cluster_write(&request).await;
                // The body written (a configuration, a certificate's key) is not kept.
                let mut kept = request.clone();
                kept["body"] = Value::Null;
                if let Err(e) = self
                    .store
                    .set_task_request(&task.id, &kept.to_string())
                    .await
                {
                    tracing::error!(task = %task.id, error = %e, "cannot drop a cluster write's body");
                }
                outcome
            }
            TaskKind::ClusterDestroy => self.run_cluster_destroy(task, &request).await,
        }
    }

    /// Keeps this controller's leases alive.
    pub async fn leases_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(LEASE_SECS as u64 / 3));
        loop {
            tick.tick().await;
            let until = self.clock.now() + LEASE_SECS;
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
}
