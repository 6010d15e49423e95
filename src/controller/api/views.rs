//! The API's answers, typed: what the OpenAPI document describes is what is sent.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::controller::fleet::operations::Queued;
use crate::controller::fleet::teams::TeamDetail;
pub use crate::controller::fleet::views::{ApplianceView, CertificateView};
use crate::controller::records::{Delivery, EventRecord, Task};
use crate::controller::store::User;
use crate::controller::teams::{Quotas, Team, TeamRole};

/// An RFC 9457 problem document.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// A stable `urn:applianced:problem:...` name.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request's path.
    pub instance: Option<String>,
    /// `quota-exceeded`: the quota's name, its limit and its use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<i64>,
}

#[derive(Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Admin,
    Member,
}

/// A user (never its password).
#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub role: RoleName,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub created_at: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id.clone(),
            name: u.name.clone(),
            role: match u.role {
                crate::controller::store::Role::Admin => RoleName::Admin,
                crate::controller::store::Role::Member => RoleName::Member,
            },
            display_name: u.display_name.clone(),
            email: u.email.clone(),
            created_at: crate::certs::format_unix(u.created_at),
        }
    }
}

/// A new user; `password` only when it was generated (shown this once).
#[derive(Serialize, ToSchema)]
pub struct CreatedUserView {
    #[serde(flatten)]
    pub user: UserView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Serialize, serde::Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum TeamRoleName {
    Owner,
    Member,
    Viewer,
}

impl From<TeamRole> for TeamRoleName {
    fn from(r: TeamRole) -> Self {
        match r {
            TeamRole::Owner => TeamRoleName::Owner,
            TeamRole::Member => TeamRoleName::Member,
            TeamRole::Viewer => TeamRoleName::Viewer,
        }
    }
}

/// A team's quotas; `null` is unlimited.
#[derive(Serialize, ToSchema)]
pub struct QuotasView {
    /// Appliances that are not deleted.
    pub max_appliances: Option<i64>,
    /// Appliance-minutes per calendar month.
    pub max_appliance_minutes: Option<i64>,
    pub max_keypairs: Option<i64>,
}

impl From<&Quotas> for QuotasView {
    fn from(q: &Quotas) -> Self {
        QuotasView {
            max_appliances: q.max_appliances,
            max_appliance_minutes: q.max_appliance_minutes,
            max_keypairs: q.max_keypairs,
        }
    }
}

/// A team as lists show it.
#[derive(Serialize, ToSchema)]
pub struct TeamView {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub quotas: QuotasView,
}

impl From<&Team> for TeamView {
    fn from(t: &Team) -> Self {
        TeamView {
            id: t.id.clone(),
            name: t.name.clone(),
            created_at: crate::certs::format_unix(t.created_at),
            quotas: QuotasView::from(&t.quotas),
        }
    }
}

/// A member of a team.
#[derive(Serialize, ToSchema)]
pub struct MemberView {
    pub user_id: String,
    pub name: String,
    pub role: TeamRoleName,
    pub since: String,
}

/// A team with its members.
#[derive(Serialize, ToSchema)]
pub struct TeamDetailView {
    #[serde(flatten)]
    pub team: TeamView,
    pub members: Vec<MemberView>,
}

impl From<&TeamDetail> for TeamDetailView {
    fn from(d: &TeamDetail) -> Self {
        TeamDetailView {
            team: TeamView::from(&d.team),
            members: d
                .members
                .iter()
                .map(|m| MemberView {
                    user_id: m.user_id.clone(),
                    name: m.user_name.clone(),
                    role: m.role.into(),
                    since: crate::certs::format_unix(m.since),
                })
                .collect(),
        }
    }
}

/// A bearer token.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_at: String,
    pub user: UserView,
}

/// A task; `result` once it succeeded, `problem` once it failed.
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    pub id: String,
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub appliance_id: Option<String>,
    /// The user who queued it.
    pub owner_id: String,
    /// The team of its appliance (none for a ping of many).
    pub team_id: Option<String>,
    pub attempts: i64,
    pub created_at: String,
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Value>,
    /// With a 202 for an appliance: the appliance as it is now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appliance: Option<ApplianceView>,
}

impl From<&Task> for TaskView {
    fn from(t: &Task) -> Self {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
        };
        TaskView {
            id: t.id.clone(),
            kind: t.kind.name().to_string(),
            state: t.state.as_str().to_string(),
            appliance_id: t.appliance_id.clone(),
            owner_id: t.owner_id.clone(),
            team_id: t.team_id.clone(),
            attempts: t.attempts,
            created_at: crate::certs::format_unix(t.created_at),
            finished_at: t.finished_at.map(crate::certs::format_unix),
            result: parse(&t.result),
            problem: parse(&t.problem),
            appliance: None,
        }
    }
}

/// A lifecycle event with its webhook deliveries.
#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub event: String,
    pub from_state: Option<String>,
    pub to_state: String,
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
    /// The user who caused it; `null` for timers and the appliance's own reports.
    pub actor: Option<String>,
    pub at: String,
    pub deliveries: Vec<DeliveryView>,
}

/// One webhook delivery of an event.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
}

impl EventView {
    pub fn new(e: EventRecord, deliveries: &[Delivery]) -> Self {
        EventView {
            id: e.id,
            event: e.kind,
            from_state: e.from_state,
            to_state: e.to_state,
            detail: e
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok()),
            actor: e.actor,
            at: crate::certs::format_unix(e.at),
            deliveries: deliveries
                .iter()
                .map(|d| DeliveryView {
                    id: d.id.clone(),
                    url: d.url.clone(),
                    state: d.state.as_str().to_string(),
                    attempts: d.attempts,
                    last_status: d.last_status,
                    last_error: d.last_error.clone(),
                    delivered_at: d.delivered_at.map(crate::certs::format_unix),
                })
                .collect(),
        }
    }
}

/// One appliance's answer to a ping.
#[derive(Serialize, ToSchema)]
pub struct PingResult {
    pub id: String,
    pub reachable: bool,
    pub latency_ms: Option<f64>,
    /// The agent's answer (`GET /` or `GET /status`).
    #[schema(value_type = Option<Object>)]
    pub agent: Option<Value>,
    pub problem: Option<Problem>,
}

/// The answers of a ping of many.
#[derive(Serialize, ToSchema)]
pub struct PingSweep {
    pub targets: u64,
    pub reachable: u64,
    pub results: Vec<PingResult>,
}

/// The answer to an appliance's callback.
#[derive(Serialize, ToSchema)]
pub struct CallbackAnswer {
    pub id: String,
    pub state: String,
}

/// 200 with a JSON body.
pub fn ok<T: Serialize>(value: T) -> Response {
    Json(value).into_response()
}

/// 201 with a JSON body.
pub fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

/// 202 with the task, `Location` and `Retry-After`.
pub fn accepted(q: Queued) -> Response {
    let mut view = TaskView::from(&q.task);
    view.appliance = q.appliance.as_ref().map(ApplianceView::from);
    pending(view)
}

/// 202 for a task that is not done: `Location` and `Retry-After`.
pub fn pending(view: TaskView) -> Response {
    let location = HeaderValue::from_str(&format!("/v1/tasks/{}", view.id))
        .unwrap_or(HeaderValue::from_static("/v1/tasks"));
    let mut r = (StatusCode::ACCEPTED, Json(view)).into_response();
    r.headers_mut().insert(header::LOCATION, location);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}
