//! `/v1/teams`: teams, their members and their quotas.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::{Body, Caller, Id, Ids, nullable_whole_number};
use super::views::{QuotasView, TeamDetailView, TeamRoleName, TeamView, created, ok};
use super::{ApiError, ApiState};
use crate::controller::fleet::ids::{TeamRef, UserId};
use crate::controller::fleet::teams::QuotaUpdate;

/// A team to create, or its new name.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamName {
    /// 1 to 64 letters, digits, `.`, `_`, `@` or `-`; unique.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    name: String,
}

/// A member's role.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRole {
    /// `owner` (manages members), `member` (creates and operates appliances) or
    /// `viewer` (reads).
    #[schema(value_type = TeamRoleName)]
    role: String,
}

/// Quotas to set: a field absent is left as it is, `null` makes it unlimited.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuotas {
    #[serde(default, deserialize_with = "nullable_whole_number")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    max_appliances: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable_whole_number")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    max_appliance_minutes: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable_whole_number")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    max_keypairs: Option<Option<i64>>,
}

/// The caller's teams (admins: every team).
#[utoipa::path(operation_id = "list_teams", get, path = "/v1/teams", tag = "teams",
    responses((status = 200, description = "The teams", body = Vec<TeamView>)))]
pub async fn list(State(s): State<ApiState>, Caller(me): Caller) -> Result<Response, ApiError> {
    let teams = s.fleet.teams(&me).await?;
    Ok(ok(teams.iter().map(TeamView::from).collect::<Vec<_>>()))
}

/// Create a team; the caller becomes its owner (admins, or anyone where
/// `teams.members_may_create` is on).
#[utoipa::path(operation_id = "create_team", post, path = "/v1/teams", tag = "teams", request_body = TeamName,
    responses(
        (status = 201, description = "Created, with its owner", body = TeamDetailView),
        (status = 403, description = "Members may not create teams here"),
        (status = 409, description = "The name is taken"),
        (status = 422, description = "Invalid name"),
    ))]
pub async fn create(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Body(body): Body<TeamName>,
) -> Result<Response, ApiError> {
    let team = s.fleet.create_team(&me, &body.name).await?;
    Ok(created(TeamDetailView::from(&team)))
}

/// A team, by id or name, with its members and quotas.
#[utoipa::path(operation_id = "get_team", get, path = "/v1/teams/{id}", tag = "teams",
    params(("id" = String, Path, description = "The team's id or name")),
    responses(
        (status = 200, description = "The team", body = TeamDetailView),
        (status = 404, description = "No such team (or not one of the caller's)"),
    ))]
pub async fn get(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<TeamRef>,
) -> Result<Response, ApiError> {
    Ok(ok(TeamDetailView::from(&s.fleet.team(&me, &id).await?)))
}

/// Rename a team (its owners, admins).
#[utoipa::path(operation_id = "update_team", patch, path = "/v1/teams/{id}", tag = "teams",
    params(("id" = String, Path, description = "The team's id or name")), request_body = TeamName,
    responses(
        (status = 200, description = "The team as it is now", body = TeamDetailView),
        (status = 403, description = "Not an owner of the team"),
        (status = 404, description = "No such team"),
        (status = 409, description = "The name is taken"),
        (status = 422, description = "Invalid name"),
    ))]
pub async fn update(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<TeamRef>,
    Body(body): Body<TeamName>,
) -> Result<Response, ApiError> {
    let team = s.fleet.rename_team(&me, &id, &body.name).await?;
    Ok(ok(TeamDetailView::from(&team)))
}

/// Delete a team (its owners, admins); refused while it owns appliances that are not
/// deleted.
#[utoipa::path(operation_id = "delete_team", delete, path = "/v1/teams/{id}", tag = "teams",
    params(("id" = String, Path, description = "The team's id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an owner of the team"),
        (status = 404, description = "No such team"),
        (status = 409, description = "The team still owns appliances"),
    ))]
pub async fn delete(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<TeamRef>,
) -> Result<Response, ApiError> {
    s.fleet.delete_team(&me, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Give a user (by id or name) a role in the team (its owners, admins); the last owner
/// cannot be demoted.
#[utoipa::path(operation_id = "set_member", put, path = "/v1/teams/{id}/members/{user}", tag = "teams",
    params(("id" = String, Path, description = "The team's id or name"), ("user" = String, Path, description = "The user's id or name")),
    request_body = MemberRole,
    responses(
        (status = 200, description = "The team as it is now", body = TeamDetailView),
        (status = 403, description = "Not an owner of the team"),
        (status = 404, description = "No such team or user"),
        (status = 409, description = "It would leave the team without an owner"),
        (status = 422, description = "Not a team role"),
    ))]
pub async fn set_member(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Ids(team, user): Ids<TeamRef, UserId>,
    Body(body): Body<MemberRole>,
) -> Result<Response, ApiError> {
    let team = s
        .fleet
        .set_member(&me, &team, user.as_str(), &body.role)
        .await?;
    Ok(ok(TeamDetailView::from(&team)))
}

/// Remove a user from the team (its owners and admins; anyone may leave); the last
/// owner cannot.
#[utoipa::path(operation_id = "remove_member", delete, path = "/v1/teams/{id}/members/{user}", tag = "teams",
    params(("id" = String, Path, description = "The team's id or name"), ("user" = String, Path, description = "The user's id or name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Not an owner of the team"),
        (status = 404, description = "No such team, user or membership"),
        (status = 409, description = "The last owner cannot leave"),
    ))]
pub async fn remove_member(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Ids(team, user): Ids<TeamRef, UserId>,
) -> Result<Response, ApiError> {
    s.fleet.remove_member(&me, &team, user.as_str()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A team's quotas.
#[utoipa::path(operation_id = "get_quotas", get, path = "/v1/teams/{id}/quotas", tag = "teams",
    params(("id" = String, Path, description = "The team's id or name")),
    responses(
        (status = 200, description = "The quotas", body = QuotasView),
        (status = 404, description = "No such team"),
    ))]
pub async fn get_quotas(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<TeamRef>,
) -> Result<Response, ApiError> {
    let team = s.fleet.visible_team(&me, &id).await?;
    Ok(ok(QuotasView::from(&team.quotas)))
}

/// Set a team's quotas (admins).
#[utoipa::path(operation_id = "set_quotas", put, path = "/v1/teams/{id}/quotas", tag = "teams",
    params(("id" = String, Path, description = "The team's id or name")), request_body = SetQuotas,
    responses(
        (status = 200, description = "The quotas as they are now", body = QuotasView),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such team"),
        (status = 422, description = "A negative quota"),
    ))]
pub async fn set_quotas(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<TeamRef>,
    Body(body): Body<SetQuotas>,
) -> Result<Response, ApiError> {
    let update = QuotaUpdate {
        max_appliances: body.max_appliances,
        max_appliance_minutes: body.max_appliance_minutes,
        max_keypairs: body.max_keypairs,
    };
    let team = s.fleet.set_quotas(&me, &id, update).await?;
    Ok(ok(QuotasView::from(&team.quotas)))
}
