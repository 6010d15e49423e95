//! `/v1/users`: operators.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::{Body, Caller, Id, nullable};
use super::views::{CreatedUserView, UserView, created, ok};
use super::{ApiError, ApiState};
use crate::controller::fleet::ids::UserId;
use crate::controller::fleet::users::{NewUser, UserPatch};

/// A user to create; without a password, one is generated and returned once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    name: String,
    /// `admin` or `member` (default).
    #[schema(value_type = Option<super::views::RoleName>)]
    role: Option<String>,
    /// At least 12 characters.
    #[schema(min_length = 12)]
    password: Option<String>,
    /// 1 to 128 characters.
    display_name: Option<String>,
    /// Where notifications go, like `name@example.com`.
    email: Option<String>,
    /// Whether the user gets a team of its own name that it owns (default `true`).
    personal_team: Option<bool>,
}

/// Changes to a user: a field absent is left as it is, `null` clears it. Users change
/// their own display name, e-mail and password; admins change anyone's, and roles.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    email: Option<Option<String>>,
    /// At least 12 characters; ends the user's sessions (its tokens).
    #[schema(min_length = 12)]
    password: Option<String>,
    /// `admin` or `member` (admins only).
    #[schema(value_type = Option<super::views::RoleName>)]
    role: Option<String>,
}

/// List the users (admins).
#[utoipa::path(operation_id = "list_users", get, path = "/v1/users", tag = "users",
    responses((status = 200, description = "The users", body = Vec<UserView>), (status = 403, description = "Not an admin")))]
pub async fn list(State(s): State<ApiState>, Caller(me): Caller) -> Result<Response, ApiError> {
    let users = s.fleet.users(&me).await?;
    Ok(ok(users.iter().map(UserView::from).collect::<Vec<_>>()))
}

/// Create a user (admins), with a personal team of its name unless `personal_team` is
/// `false`.
#[utoipa::path(operation_id = "create_user", post, path = "/v1/users", tag = "users", request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = CreatedUserView),
        (status = 403, description = "Not an admin"),
        (status = 409, description = "The name is taken (by a user, or by a team for the personal team)"),
        (status = 422, description = "Invalid values"),
    ))]
pub async fn create(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Body(new): Body<CreateUser>,
) -> Result<Response, ApiError> {
    let (user, password) = s
        .fleet
        .create_user(
            &me,
            NewUser {
                name: new.name,
                role: new.role,
                password: new.password,
                display_name: new.display_name,
                email: new.email,
                personal_team: new.personal_team,
            },
        )
        .await?;
    Ok(created(CreatedUserView {
        user: UserView::from(&user),
        password,
    }))
}

/// A user, for itself or an admin.
#[utoipa::path(operation_id = "get_user", get, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 403, description = "Another user, and not an admin"),
        (status = 404, description = "No such user"),
    ))]
pub async fn get(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<UserId>,
) -> Result<Response, ApiError> {
    Ok(ok(UserView::from(&s.fleet.user(&me, &id).await?)))
}

/// Change a user: itself, or anyone for admins.
#[utoipa::path(operation_id = "update_user", patch, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)), request_body = PatchUser,
    responses(
        (status = 200, description = "The user as it is now", body = UserView),
        (status = 403, description = "Another user, or a role change, and not an admin"),
        (status = 404, description = "No such user"),
        (status = 422, description = "Invalid values"),
    ))]
pub async fn update(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<UserId>,
    Body(patch): Body<PatchUser>,
) -> Result<Response, ApiError> {
    let patch = UserPatch {
        display_name: patch.display_name,
        email: patch.email,
        password: patch.password,
        role: patch.role,
    };
    Ok(ok(UserView::from(
        &s.fleet.update_user(&me, &id, patch).await?,
    )))
}

/// Delete a user with its tokens and memberships (admins).
#[utoipa::path(operation_id = "delete_user", delete, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user"),
    ))]
pub async fn delete(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<UserId>,
) -> Result<Response, ApiError> {
    s.fleet.delete_user(&me, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
