//! `/v1/appliances`: create, list, show, delete, act on, and read the events of
//! appliances.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Body, Caller, Id, Params};
use super::views::{ApplianceView, EventView, TaskView, accepted, ok};
use super::{ApiError, ApiState};
use crate::controller::fleet::ids::ApplianceId;
use crate::controller::fleet::operations::{ActionOutcome, CreateRequest, ListFilter};

/// An appliance to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAppliance {
    /// The team that will own it, by id or name; default: the caller's only team. The
    /// caller needs the `member` or `owner` role in it.
    team: Option<String>,
    /// 1 to 64 letters, digits, `.`, `_` or `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    name: String,
    /// Within the configured range (default 15..235); default 60.
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    ttl_minutes: Option<u32>,
    /// Idempotency key: the same key with the same request is the same task.
    external_id: Option<String>,
    /// Where the appliance's events are posted as signed webhooks: http or https, on a
    /// host `webhooks.allowed_hosts` permits.
    callback_url: Option<String>,
    /// A template by name (`GET /v1/templates`); default: the first. Or, instead, an
    /// `image`, a `flavor` and a `network`.
    template: Option<String>,
    /// An image, by id or name (with `flavor` and `network`, instead of a template).
    image: Option<String>,
    /// A flavor, by id or name.
    flavor: Option<String>,
    /// A network, by id or name.
    network: Option<String>,
    /// A region by name; default: the template's, or the first region with room in
    /// placement order.
    region: Option<String>,
    /// The backend that makes it, by name; default: the template's or region's, else
    /// the first configured.
    backend: Option<String>,
    /// A cluster of the team to join, by id or name (a `SINGLE` cluster holds one
    /// appliance, an `ACTIVE_STANDBY` one two; the first to join is active).
    cluster: Option<String>,
    /// Where its `launched`, `expiring` and `stopped` events are mailed (the controller
    /// needs an `[smtp]` server).
    notify_email: Option<String>,
    /// A key pair of the team, by id or name: installed where the backend installs keys
    /// (`process`: the appliance directory's `authorized_keys`).
    keypair: Option<String>,
}

/// Filters of the list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// A lifecycle state (deleted appliances are listed only with `state=deleted`).
    state: Option<String>,
    name: Option<String>,
    external_id: Option<String>,
}

/// An action on an appliance.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// `start` (or `on`), `stop` (or `off`), `suspend`, `resume`, `destroy`,
    /// `rotate-certificate` (202 and a task), or `extend` (200, with `minutes`).
    action: String,
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    minutes: Option<u32>,
}

/// Create an appliance: 202 and its create task.
#[utoipa::path(operation_id = "create_appliance", post, path = "/v1/appliances", tag = "appliances", request_body = CreateAppliance,
    responses(
        (status = 202, description = "Queued: the task, with the appliance", body = TaskView),
        (status = 403, description = "A viewer of the team, or over the team's quota (`quota-exceeded`, with `quota`, `limit` and `used`)"),
        (status = 409, description = "The external_id was used with another request, or the backend cannot create appliances (`not-supported-by-backend`)"),
        (status = 422, description = "Invalid values"),
        (status = 503, description = "No capacity left"),
    ))]
pub async fn create(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Body(body): Body<CreateAppliance>,
) -> Result<Response, ApiError> {
    let request = CreateRequest {
        team: body.team,
        name: body.name,
        ttl_minutes: body.ttl_minutes,
        external_id: body.external_id,
        callback_url: body.callback_url,
        template: body.template,
        keypair: body.keypair,
        image: body.image,
        flavor: body.flavor,
        network: body.network,
        region: body.region,
        notify_email: body.notify_email,
        cluster: body.cluster,
        backend: body.backend,
    };
    Ok(accepted(s.fleet.create(&me, request).await?))
}

/// The appliances the caller sees.
#[utoipa::path(operation_id = "list_appliances", get, path = "/v1/appliances", tag = "appliances", params(ListQuery),
    responses(
        (status = 200, description = "The appliances", body = Vec<ApplianceView>),
        (status = 422, description = "Not a lifecycle state"),
    ))]
pub async fn list(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Params(q): Params<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = ListFilter {
        state: q.state,
        name: q.name,
        external_id: q.external_id,
    };
    let list = s.fleet.list(&me, filter).await?;
    Ok(ok(list.iter().map(ApplianceView::from).collect::<Vec<_>>()))
}

/// An appliance.
#[utoipa::path(operation_id = "get_appliance", get, path = "/v1/appliances/{id}", tag = "appliances", params(("id" = String, Path)),
    responses(
        (status = 200, description = "The appliance", body = ApplianceView),
        (status = 404, description = "No such appliance (or not the caller's)"),
    ))]
pub async fn get(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<ApplianceId>,
) -> Result<Response, ApiError> {
    Ok(ok(ApplianceView::from(&s.fleet.visible(&me, &id).await?)))
}

/// Delete an appliance: stop it, revoke its certificate, remove it.
#[utoipa::path(operation_id = "delete_appliance", delete, path = "/v1/appliances/{id}", tag = "appliances", params(("id" = String, Path)),
    responses(
        (status = 202, description = "Queued: the task, with the appliance", body = TaskView),
        (status = 403, description = "A viewer of the team, or over the team's quota (`quota-exceeded`, with `quota`, `limit` and `used`)"),
        (status = 404, description = "No such appliance"),
        (status = 409, description = "Not now (already deleted, or another operation runs)"),
    ))]
pub async fn delete(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<ApplianceId>,
) -> Result<Response, ApiError> {
    Ok(accepted(s.fleet.delete(&me, &id).await?))
}

/// Act on an appliance.
#[utoipa::path(operation_id = "act_on_appliance", post, path = "/v1/appliances/{id}/actions", tag = "appliances",
    params(("id" = String, Path)), request_body = Action,
    responses(
        (status = 200, description = "Extended: the appliance", body = ApplianceView),
        (status = 202, description = "Queued: the task, with the appliance", body = TaskView),
        (status = 403, description = "A viewer of the team, or over the team's quota (`quota-exceeded`, with `quota`, `limit` and `used`)"),
        (status = 404, description = "No such appliance"),
        (status = 409, description = "Not allowed in the appliance's state, or not something its backend can do (`not-supported-by-backend`)"),
        (status = 422, description = "Unknown action or bad minutes"),
    ))]
pub async fn act(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<ApplianceId>,
    Body(action): Body<Action>,
) -> Result<Response, ApiError> {
    match s
        .fleet
        .act(&me, &id, &action.action, action.minutes)
        .await?
    {
        ActionOutcome::Queued(q) => Ok(accepted(*q)),
        ActionOutcome::Extended(a) => Ok(ok(ApplianceView::from(a.as_ref()))),
    }
}

/// The lifecycle events of an appliance, each with its actor and webhook deliveries.
#[utoipa::path(operation_id = "appliance_events", get, path = "/v1/appliances/{id}/events", tag = "appliances",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The events, oldest first", body = Vec<EventView>),
        (status = 404, description = "No such appliance"),
    ))]
pub async fn events(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<ApplianceId>,
) -> Result<Response, ApiError> {
    let events = s.fleet.events(&me, &id).await?;
    Ok(ok(events
        .into_iter()
        .map(|(e, d)| EventView::new(e, &d))
        .collect::<Vec<_>>()))
}
