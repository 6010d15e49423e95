//! `/v1/users`: operators.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::{Body, Caller, Id};
use super::views::{CreatedUserView, UserView, created, ok};
use super::{ApiError, ApiState};
use crate::controller::fleet::ids::UserId;
use crate::controller::fleet::users::NewUser;

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
}

/// List the users (admins).
#[utoipa::path(operation_id = "list_users", get, path = "/v1/users", tag = "users",
    responses((status = 200, description = "The users", body = Vec<UserView>), (status = 403, description = "Not an admin")))]
pub async fn list(State(s): State<ApiState>, Caller(me): Caller) -> Result<Response, ApiError> {
    let users = s.fleet.users(me).await?;
    Ok(ok(users.iter().map(UserView::from).collect::<Vec<_>>()))
}

/// Create a user (admins).
#[utoipa::path(operation_id = "create_user", post, path = "/v1/users", tag = "users", request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = CreatedUserView),
        (status = 403, description = "Not an admin"),
        (status = 409, description = "The name is taken"),
    ))]
pub async fn create(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Body(new): Body<CreateUser>,
) -> Result<Response, ApiError> {
    let (user, password) = s
        .fleet
        .create_user(
            me,
            NewUser {
                name: new.name,
                role: new.role,
                password: new.password,
            },
        )
        .await?;
    let v = UserView::from(&user);
    Ok(created(CreatedUserView {
        id: v.id,
        name: v.name,
        role: v.role,
        created_at: v.created_at,
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

/// Delete a user and its tokens (admins).
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
    s.fleet.delete_user(me, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
