//! `POST /v1/tokens`: a bearer token for basic credentials.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::{OptionalBody, PasswordCaller, TokenCaller};
use super::views::{TokenView, UserView, created};
use super::{ApiError, ApiState};

/// How long the token should live (default 8 h, at most 24 h).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    ttl_seconds: Option<i64>,
}

/// Exchange basic credentials for a bearer token.
#[utoipa::path(operation_id = "create_token", post, path = "/v1/tokens", tag = "users",
    request_body(content = Option<TokenRequest>, description = "optional"),
    security(("basic" = [])),
    responses(
        (status = 201, description = "A token", body = TokenView),
    ))]
pub async fn create(
    State(s): State<ApiState>,
    PasswordCaller(user): PasswordCaller,
    OptionalBody(ask): OptionalBody<TokenRequest>,
) -> Result<Response, ApiError> {
    let issued = s.fleet.issue_token(user, ask.ttl_seconds).await?;
    Ok(created(TokenView {
        token: issued.token,
        token_type: "Bearer".into(),
        expires_at: crate::certs::format_unix(issued.expires_at),
        user: UserView::from(&issued.user),
    }))
}

/// Log out: the bearer token the request carries stops working at once.
#[utoipa::path(operation_id = "delete_token", delete, path = "/v1/tokens", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
    ))]
pub async fn delete(
    TokenCaller(token): TokenCaller,
    State(s): State<ApiState>,
) -> Result<Response, ApiError> {
    s.fleet.revoke_token(&token).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
