//! `POST /v1/events` on appliance listeners: an appliance reports about itself.

use axum::extract::State;
use axum::response::Response;

use super::extract::{ApplianceCaller, Body};
use super::views::{CallbackAnswer, ok};
use super::{ApiError, ApiState};
use crate::callback::Callback;

/// A callback from the appliance its client certificate names.
#[utoipa::path(operation_id = "report_event", post, path = "/v1/events", tag = "appliance zone", request_body = Callback,
    security(("appliance_certificate" = [])),
    responses(
        (status = 200, description = "Recorded: the appliance's state", body = CallbackAnswer),
        (status = 401, description = "No client certificate"),
        (status = 403, description = "Not this appliance's certificate"),
        (status = 404, description = "On any other listener than an appliance one"),
        (status = 409, description = "Not in this state"),
        (status = 422, description = "Unknown event"),
    ))]
pub async fn report(
    State(s): State<ApiState>,
    ApplianceCaller(caller): ApplianceCaller,
    Body(callback): Body<Callback>,
) -> Result<Response, ApiError> {
    let a = s.fleet.callback(&caller, callback).await?;
    Ok(ok(CallbackAnswer {
        id: a.id,
        state: a.state.as_str().to_string(),
    }))
}
