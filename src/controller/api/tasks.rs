//! `/v1/tasks`: what the caller (admins: anyone) asked for, and how it went.

use axum::extract::State;
use axum::response::Response;

use super::extract::{Caller, Id};
use super::views::{TaskView, ok, pending};
use super::{ApiError, ApiState};
use crate::controller::fleet::ids::TaskId;

/// The caller's tasks (admins: all), newest first.
#[utoipa::path(operation_id = "list_tasks", get, path = "/v1/tasks", tag = "tasks",
    responses((status = 200, description = "The tasks", body = Vec<TaskView>)))]
pub async fn list(State(s): State<ApiState>, Caller(me): Caller) -> Result<Response, ApiError> {
    let tasks = s.fleet.tasks(&me).await?;
    Ok(ok(tasks.iter().map(TaskView::from).collect::<Vec<_>>()))
}

/// A task: 202 with `Retry-After` while it is queued or running, then 200.
#[utoipa::path(operation_id = "get_task", get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path)),
    responses(
        (status = 200, description = "Done: its result or problem", body = TaskView),
        (status = 202, description = "Not done yet", body = TaskView),
        (status = 404, description = "No such task (or not the caller's)"),
    ))]
pub async fn get(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<TaskId>,
) -> Result<Response, ApiError> {
    let task = s.fleet.task(&me, &id).await?;
    let view = TaskView::from(&task);
    Ok(if task.is_done() {
        ok(view)
    } else {
        pending(view)
    })
}

/// Cancel a task that is queued and has not run yet (not a start or stop, which moved
/// their appliance when queued; a cancelled create leaves its appliance failed).
#[utoipa::path(operation_id = "cancel_task", post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path)),
    responses(
        (status = 200, description = "Cancelled", body = TaskView),
        (status = 404, description = "No such task (or not the caller's)"),
        (status = 409, description = "Running, done, interrupted once, or a start or stop"),
    ))]
pub async fn cancel(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<TaskId>,
) -> Result<Response, ApiError> {
    let task = s.fleet.cancel_task(&me, &id).await?;
    Ok(ok(TaskView::from(&task)))
}
