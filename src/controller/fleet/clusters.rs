//! Clusters: a team's appliances grouped under a topology (`SINGLE`, or
//! `ACTIVE_STANDBY` with an active member and a standby). Appliances join one at create;
//! a write to the cluster's agents goes to the active member first and to the others
//! only if it succeeded, as one task; deleting a cluster destroys its appliances.

use base64::Engine;

use super::ids::ClusterId;
use super::operations::{AgentMethod, AgentRequest};
use super::teams::Principal;
use super::*;
use crate::controller::auth;
use crate::controller::clusters::{Cluster, Topology};
use crate::controller::teams::TeamRole;

/// A cluster with its members (appliances not deleted, the active one first) and which
/// of them is active.
pub struct ClusterDetail {
    pub cluster: Cluster,
    pub members: Vec<Appliance>,
    pub active: Option<String>,
}

/// The active member: the recorded one while it lives, else the oldest member.
fn active_of(cluster: &Cluster, members: &[Appliance]) -> Option<String> {
    cluster
        .active_id
        .as_ref()
        .filter(|id| members.iter().any(|m| &m.id == *id))
        .cloned()
        .or_else(|| members.first().map(|m| m.id.clone()))
}

fn method_name(m: AgentMethod) -> &'static str {
    match m {
        AgentMethod::Get => "GET",
        AgentMethod::Put => "PUT",
        AgentMethod::Post => "POST",
        AgentMethod::Delete => "DELETE",
    }
}

fn parse_method(s: &str) -> Option<AgentMethod> {
    match s {
        "GET" => Some(AgentMethod::Get),
        "PUT" => Some(AgentMethod::Put),
        "POST" => Some(AgentMethod::Post),
        "DELETE" => Some(AgentMethod::Delete),
        _ => None,
    }
}

impl Fleet {
    async fn detail(&self, cluster: Cluster) -> Result<ClusterDetail, FleetError> {
        let members = self.store.cluster_members(&cluster.id).await?;
        Ok(with_members(cluster, &members))
    }
}

/// A cluster with its members among `appliances`.
fn with_members(cluster: Cluster, appliances: &[Appliance]) -> ClusterDetail {
    {
        let mut members: Vec<Appliance> = appliances
            .iter()
            .filter(|a| a.cluster_id.as_deref() == Some(cluster.id.as_str()))
            .cloned()
            .collect();
        let active = active_of(&cluster, &members);
        // The active member first, then the others, oldest first.
        members.sort_by_key(|a| Some(&a.id) != active.as_ref());
        ClusterDetail {
            cluster,
            members,
            active,
        }
    }
}

impl Fleet {
    /// Creates a cluster for a team (its members and owners).
    pub async fn create_cluster(
        &self,
        caller: &Principal,
        team: Option<&str>,
        name: &str,
        topology: &str,
    ) -> Result<ClusterDetail, FleetError> {
        operations::check_name(name)?;
        let topology = Topology::parse(topology).ok_or_else(|| {
            FleetError::Invalid(format!("topology {topology:?}: SINGLE or ACTIVE_STANDBY"))
        })?;
        let team = self.team_for(caller, team, "create clusters").await?;
        let cluster = Cluster {
            id: auth::new_id(),
            team_id: team.id,
            name: name.to_string(),
            topology,
            active_id: None,
            deleting: false,
            created_by: caller.id.clone(),
            created_at: self.clock.now(),
        };
        if !self.store.insert_cluster(&cluster).await? {
            return Err(FleetError::NoSuchTeam);
        }
        self.detail(cluster).await
    }

    /// The clusters of the caller's teams (admins: all).
    pub async fn clusters(&self, caller: &Principal) -> Result<Vec<ClusterDetail>, FleetError> {
        let appliances = self.store.appliances(false).await?;
        Ok(self
            .store
            .clusters()
            .await?
            .into_iter()
            .filter(|c| caller.sees(&c.team_id))
            .map(|c| with_members(c, &appliances))
            .collect())
    }

    pub async fn cluster(
        &self,
        caller: &Principal,
        id: &ClusterId,
    ) -> Result<ClusterDetail, FleetError> {
        match self.store.cluster(id.as_str()).await? {
            Some(c) if caller.sees(&c.team_id) => self.detail(c).await,
            _ => Err(FleetError::NoSuchCluster),
        }
    }

    /// The cluster an appliance of `team_id` joins at create, by id or name.
    pub(super) async fn cluster_for_create(
        &self,
        team_id: &str,
        cluster: &str,
    ) -> Result<Cluster, FleetError> {
        let found = match self.store.cluster(cluster).await? {
            Some(c) if c.team_id == team_id => Some(c),
            _ => self.store.cluster_by_name(team_id, cluster).await?,
        };
        found.ok_or_else(|| {
            FleetError::Invalid(format!("cluster {cluster:?}: no such cluster in the team"))
        })
    }

    /// Queues a cluster's task (it has no appliance: it names the team itself).
    async fn queue_cluster_task(
        &self,
        caller: &Principal,
        kind: TaskKind,
        cluster: &Cluster,
        mut request: Value,
    ) -> Result<Task, FleetError> {
        request["cluster_id"] = Value::String(cluster.id.clone());
        request["actor"] = Value::String(caller.name.clone());
        let id = self
            .store
            .queue_task(
                &NewTask {
                    kind,
                    appliance_id: None,
                    owner_id: &caller.id,
                    request: request.to_string(),
                    team_id: Some(&cluster.team_id),
                },
                self.clock.now(),
            )
            .await?;
        self.task_queued();
        self.store
            .task(&id)
            .await?
            .ok_or_else(|| FleetError::Internal(format!("task {id} vanished")))
    }

    /// Deletes a cluster (its team's members and owners): from now on no appliance
    /// joins it, and a task queues the destroy of each of its appliances, then removes
    /// it.
    pub async fn delete_cluster(
        &self,
        caller: &Principal,
        id: &ClusterId,
    ) -> Result<Task, FleetError> {
        let detail = self.cluster(caller, id).await?;
        caller.needs(&detail.cluster.team_id, TeamRole::Member, "delete clusters")?;
        if !self.store.mark_cluster_deleting(&detail.cluster).await? {
            return Err(FleetError::NoSuchCluster);
        }
        self.queue_cluster_task(caller, TaskKind::ClusterDestroy, &detail.cluster, json!({}))
            .await
    }

    /// The same agent write to every member (admins: configurations are code), as one
    /// task.
    pub async fn cluster_write(
        &self,
        caller: &Principal,
        id: &ClusterId,
        request: AgentRequest,
    ) -> Result<Task, FleetError> {
        let detail = self.cluster(caller, id).await?;
        if !caller.admin {
            return Err(FleetError::PassThroughReadOnly);
        }
        if request.method == AgentMethod::Get {
            return Err(FleetError::BadRequest(
                "a cluster takes writes (PUT, POST, DELETE); read each appliance".into(),
            ));
        }
        if detail.members.is_empty() {
            return Err(FleetError::Conflict(format!(
                "cluster {} has no appliances",
                detail.cluster.name
            )));
        }
        let body = json!({
            "method": method_name(request.method),
            "path": request.path,
            "content_type": request.content_type,
            "accept": request.accept,
            "body": base64::engine::general_purpose::STANDARD.encode(&request.body),
        });
        self.queue_cluster_task(caller, TaskKind::ClusterWrite, &detail.cluster, body)
            .await
    }

    /// A cluster write: the active member first; the others, at the same time, only if
    /// it took it. Every member's outcome is in the result (or, when one failed, in the
    /// problem).
    pub(super) async fn run_cluster_write(&self, request: &Value) -> Result<Value, FleetError> {
        let cluster_id = request["cluster_id"].as_str().unwrap_or_default();
        let cluster = self
            .store
            .cluster(cluster_id)
            .await?
            .ok_or(FleetError::NoSuchCluster)?;
        let detail = self.detail(cluster).await?;
        let method = request["method"]
            .as_str()
            .and_then(parse_method)
            .ok_or_else(|| FleetError::Internal("a cluster write without a method".into()))?;
        // Dropped once the write ran: a write that lost it is not sent empty.
        let body = request["body"].as_str().ok_or_else(|| {
            FleetError::Conflict("this write ran already; its body is not kept: write again".into())
        })?;
        let body = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        let actor = request["actor"].as_str().unwrap_or("-").to_string();
        let make = || AgentRequest {
            method,
            path: request["path"].as_str().unwrap_or("/").to_string(),
            content_type: request["content_type"].as_str().map(String::from),
            accept: request["accept"].as_str().map(String::from),
            body: Bytes::from(body.clone()),
        };
        let write = |a: Appliance, request: AgentRequest| {
            let actor = actor.clone();
            async move {
                if !a.state.is_running() {
                    let why = format!("it is {}", a.state.as_str());
                    return (a, Err(why));
                }
                let answer = self.forward(&a, request, &actor).await;
                let outcome = match answer {
                    Ok(r) if (200..300).contains(&r.status) => Ok(r.status),
                    Ok(r) => Err(format!(
                        "its agent answered {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    )),
                    Err(e) => Err(e.detail()),
                };
                (a, outcome)
            }
        };
        let active_id = detail.active.clone();
        let (active, others): (Vec<Appliance>, Vec<Appliance>) = detail
            .members
            .into_iter()
            .partition(|a| Some(&a.id) == active_id.as_ref());
        let mut outcomes = Vec::new();
        let mut failed = false;
        for a in active {
            let (a, outcome) = write(a, make()).await;
            failed |= outcome.is_err();
            outcomes.push(("active", a, outcome));
        }
        if failed {
            for a in others {
                outcomes.push((
                    "standby",
                    a,
                    Err("skipped: the active member did not take the write".into()),
                ));
            }
        } else {
            let results =
                futures_util::future::join_all(others.into_iter().map(|a| write(a, make()))).await;
            for (a, outcome) in results {
                failed |= outcome.is_err();
                outcomes.push(("standby", a, outcome));
            }
        }
        let members: Vec<Value> = outcomes
            .into_iter()
            .map(|(role, a, outcome)| match outcome {
                Ok(status) => json!({"appliance_id": a.id, "role": role, "outcome": "applied", "status": status}),
                Err(detail) if detail.starts_with("skipped") => json!({"appliance_id": a.id, "role": role, "outcome": "skipped", "detail": detail}),
                Err(detail) => json!({"appliance_id": a.id, "role": role, "outcome": "failed", "detail": detail}),
            })
            .collect();
        let result = json!({"cluster_id": cluster_id, "members": members});
        if failed {
            Err(FleetError::ClusterWriteFailed(result))
        } else {
            Ok(result)
        }
    }

    /// A cluster's destroy: each member's destroy queued as its own task (as a
    /// `DELETE` of it would be: one operation per appliance at a time), then the cluster
    /// removed. A member still busy with another operation fails the task (409), the
    /// cluster staying closed to new members; deleting it again finishes the work.
    pub(super) async fn run_cluster_destroy(
        &self,
        task: &Task,
        request: &Value,
    ) -> Result<Value, FleetError> {
        let cluster_id = request["cluster_id"].as_str().unwrap_or_default();
        let Some(cluster) = self.store.cluster(cluster_id).await? else {
            return Ok(json!({"cluster_id": cluster_id, "destroy_tasks": []}));
        };
        let detail = self.detail(cluster).await?;
        let mut queued = Vec::new();
        for a in &detail.members {
            if lifecycle::next(a.state, Event::Destroy).is_none() {
                continue;
            }
            let id = self
                .queue(
                    TaskKind::Destroy,
                    Some(&a.id),
                    &task.owner_id,
                    json!({"action": "destroy", "cluster_id": cluster_id}),
                )
                .await?;
            queued.push(id);
        }
        self.store.delete_cluster(cluster_id).await?;
        Ok(json!({"cluster_id": cluster_id, "destroy_tasks": queued}))
    }
}
