//! Pings: `POST /v1/appliances/:id/ping` and `POST /v1/ping`.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, Id, OptionalBody, Params};
use super::views::{PingResult, PingSweep, TaskView, ok, pending};
use super::{ApiError, ApiState};
use crate::controller::fleet::ids::ApplianceId;
use crate::controller::fleet::operations::PingOutcome;
use crate::controller::fleet::{Check, FleetError};

/// `?async=true` queues the ping as a task.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsyncQuery {
    /// `true` (or `1`): answer 202 with a task; `false` (or `0`, the default): answer now.
    #[param(value_type = Option<bool>)]
    r#async: Option<String>,
}

/// `?async=` and `?check=` for one appliance.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PingQuery {
    /// `true` (or `1`): answer 202 with a task; `false` (or `0`, the default): answer now.
    #[param(value_type = Option<bool>)]
    r#async: Option<String>,
    /// `ping` (the agent's `GET /`, default) or `status` (its `GET /status`).
    #[param(value_type = Option<CheckName>)]
    check: Option<String>,
}

/// What a ping asks the agents.
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckName {
    #[default]
    Ping,
    Status,
}

/// Whom to ping (default: every running appliance the caller sees) and what to ask.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PingMany {
    targets: Option<Vec<String>>,
    #[serde(default)]
    check: CheckName,
}

fn asynchronous(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ApiError::Malformed(format!(
            "async {other:?}: true or false"
        ))),
    }
}

fn check(c: CheckName) -> Check {
    match c {
        CheckName::Ping => Check::Ping,
        CheckName::Status => Check::Status,
    }
}

fn answer(outcome: PingOutcome) -> Response {
    match outcome {
        PingOutcome::Done(v) => ok(v),
        PingOutcome::Queued(task) => pending(TaskView::from(&task)),
    }
}

/// Ping one appliance's agent.
#[utoipa::path(operation_id = "ping_appliance", post, path = "/v1/appliances/{id}/ping", tag = "pings",
    params(("id" = String, Path), PingQuery),
    responses(
        (status = 200, description = "The agent's answer", body = PingResult),
        (status = 202, description = "Queued", body = TaskView),
        (status = 404, description = "No such appliance"),
        (status = 409, description = "Its agent is not running"),
        (status = 422, description = "Unknown check"),
        (status = 502, description = "The agent does not answer"),
    ))]
pub async fn one(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<ApplianceId>,
    Params(q): Params<PingQuery>,
) -> Result<Response, ApiError> {
    let asynchronous = asynchronous(q.r#async.as_deref())?;
    let what = match q.check.as_deref() {
        None | Some("ping") => Check::Ping,
        Some("status") => Check::Status,
        Some(other) => {
            return Err(FleetError::Invalid(format!("check {other:?}: ping or status")).into());
        }
    };
    Ok(answer(
        s.fleet.ping_one(&me, &id, what, asynchronous).await?,
    ))
}

/// Ping many appliances' agents, at most 64 at a time.
#[utoipa::path(operation_id = "ping_many", post, path = "/v1/ping", tag = "pings", params(AsyncQuery),
    request_body(content = Option<PingMany>, description = "optional"),
    responses(
        (status = 200, description = "Each target's answer", body = PingSweep),
        (status = 202, description = "Queued", body = TaskView),
        (status = 422, description = "A target the caller cannot see, or none"),
    ))]
pub async fn many(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Params(q): Params<AsyncQuery>,
    OptionalBody(body): OptionalBody<PingMany>,
) -> Result<Response, ApiError> {
    let asynchronous = asynchronous(q.r#async.as_deref())?;
    Ok(answer(
        s.fleet
            .ping_targets(&me, body.targets, check(body.check), asynchronous)
            .await?,
    ))
}
