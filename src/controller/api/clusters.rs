//! `/v1/clusters`: a team's appliances under a topology; a write to all their agents as
//! one task; deleting one destroys its appliances.

use axum::extract::{Request, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::agent::agent_request;
use super::extract::{Body, Caller, Id};
use super::views::{TaskView, accepted, created, ok};
use super::{ApiError, ApiState};
use crate::controller::fleet::clusters::ClusterDetail;
use crate::controller::fleet::ids::ClusterId;
use crate::controller::fleet::operations::Queued;

/// A cluster to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    /// 1 to 64 letters, digits, `.`, `_` or `-`; unique in the team.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    name: String,
    /// The team, by id or name; default: the caller's only team.
    team: Option<String>,
    /// `SINGLE` (one appliance) or `ACTIVE_STANDBY` (two: the first to join is active).
    #[schema(value_type = TopologyName)]
    topology: String,
}

#[derive(ToSchema)]
#[allow(dead_code, clippy::upper_case_acronyms)]
pub enum TopologyName {
    SINGLE,
    #[allow(non_camel_case_types)]
    ACTIVE_STANDBY,
}

/// A member of a cluster.
#[derive(Serialize, ToSchema)]
pub struct ClusterMemberView {
    pub appliance_id: String,
    pub name: String,
    pub state: String,
    /// `active` or `standby`.
    pub role: String,
}

/// A cluster with its members.
#[derive(Serialize, ToSchema)]
pub struct ClusterView {
    pub id: String,
    pub name: String,
    pub team_id: String,
    pub topology: String,
    /// The member that takes writes first.
    pub active_id: Option<String>,
    pub members: Vec<ClusterMemberView>,
    pub created_at: String,
}

impl From<&ClusterDetail> for ClusterView {
    fn from(d: &ClusterDetail) -> Self {
        ClusterView {
            id: d.cluster.id.clone(),
            name: d.cluster.name.clone(),
            team_id: d.cluster.team_id.clone(),
            topology: d.cluster.topology.as_str().to_string(),
            active_id: d.active.clone(),
            members: d
                .members
                .iter()
                .map(|a| ClusterMemberView {
                    appliance_id: a.id.clone(),
                    name: a.name.clone(),
                    state: a.state.as_str().to_string(),
                    role: if Some(&a.id) == d.active.as_ref() {
                        "active".into()
                    } else {
                        "standby".into()
                    },
                })
                .collect(),
            created_at: crate::certs::format_unix(d.cluster.created_at),
        }
    }
}

/// The clusters of the caller's teams (admins: all).
#[utoipa::path(operation_id = "list_clusters", get, path = "/v1/clusters", tag = "clusters",
    responses((status = 200, description = "The clusters", body = Vec<ClusterView>)))]
pub async fn list(State(s): State<ApiState>, Caller(me): Caller) -> Result<Response, ApiError> {
    let clusters = s.fleet.clusters(&me).await?;
    Ok(ok(clusters
        .iter()
        .map(ClusterView::from)
        .collect::<Vec<_>>()))
}

/// Create a cluster (members and owners of the team); appliances join it at create.
#[utoipa::path(operation_id = "create_cluster", post, path = "/v1/clusters", tag = "clusters", request_body = CreateCluster,
    responses(
        (status = 201, description = "Created", body = ClusterView),
        (status = 403, description = "A viewer of the team"),
        (status = 409, description = "The team has a cluster of this name"),
        (status = 422, description = "Invalid name, team or topology"),
    ))]
pub async fn create(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Body(body): Body<CreateCluster>,
) -> Result<Response, ApiError> {
    let cluster = s
        .fleet
        .create_cluster(&me, body.team.as_deref(), &body.name, &body.topology)
        .await?;
    Ok(created(ClusterView::from(&cluster)))
}

/// A cluster, with its members and their roles.
#[utoipa::path(operation_id = "get_cluster", get, path = "/v1/clusters/{id}", tag = "clusters", params(("id" = String, Path)),
    responses(
        (status = 200, description = "The cluster", body = ClusterView),
        (status = 404, description = "No such cluster"),
    ))]
pub async fn get(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<ClusterId>,
) -> Result<Response, ApiError> {
    Ok(ok(ClusterView::from(&s.fleet.cluster(&me, &id).await?)))
}

/// Delete a cluster: a task destroys its appliances, then the cluster (seed 000's rack
/// destroy).
#[utoipa::path(operation_id = "delete_cluster", delete, path = "/v1/clusters/{id}", tag = "clusters", params(("id" = String, Path)),
    responses(
        (status = 202, description = "Queued: the task", body = TaskView),
        (status = 403, description = "A viewer of the team"),
        (status = 404, description = "No such cluster"),
    ))]
pub async fn delete(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<ClusterId>,
) -> Result<Response, ApiError> {
    let task = s.fleet.delete_cluster(&me, &id).await?;
    Ok(accepted(Queued {
        task,
        appliance: None,
    }))
}

// The OpenAPI operations of a cluster write (served by `write`, routed in `mod.rs` with
// the path as a wildcard): one per method.
macro_rules! cluster_write_doc {
    ($name:ident, $op:literal, $method:ident, [$($body:tt)*]) => {
        /// The same write to every member's agent (admins): the active member first, the
        /// others only if it took it, as one task whose result lists each member's
        /// outcome.
        #[utoipa::path(operation_id = $op, $method, path = "/v1/clusters/{id}/agent/{path}", tag = "clusters",
            params(("id" = String, Path), ("path" = String, Path, description = "the agent's path")),
            $($body)*
            responses(
                (status = 202, description = "Queued: the task", body = TaskView),
                (status = 403, description = "Writes need the admin role"),
                (status = 404, description = "No such cluster"),
                (status = 409, description = "The cluster has no appliances"),
            ))]
        pub async fn $name() {}
    };
}

cluster_write_doc!(
    put_doc,
    "cluster_agent_put",
    put,
    [request_body(content = String, content_type = "text/plain"),]
);
cluster_write_doc!(
    post_doc,
    "cluster_agent_post",
    post,
    [request_body(content = String, content_type = "text/plain"),]
);
cluster_write_doc!(delete_doc, "cluster_agent_delete", delete, []);

/// PUT, POST and DELETE on `/v1/clusters/:id/agent/...`.
pub async fn write(
    State(s): State<ApiState>,
    Caller(me): Caller,
    req: Request,
) -> Result<Response, ApiError> {
    let (id, request) = agent_request(req, "/v1/clusters/").await?;
    let task = s
        .fleet
        .cluster_write(&me, &ClusterId::from(id), request)
        .await?;
    Ok(accepted(Queued {
        task,
        appliance: None,
    }))
}
