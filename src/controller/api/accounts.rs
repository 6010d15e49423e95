//! `/v1/service-accounts`: integrations on `api` listeners (admins).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Body, Caller, Id};
use super::views::{TeamRoleName, created, ok};
use super::{ApiError, ApiState};
use crate::controller::accounts::ServiceAccount;
use crate::controller::fleet::accounts::NewAccount;
use crate::controller::fleet::ids::AccountId;

/// A service account to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// 1 to 64 letters, digits, `.`, `_`, `@` or `-`; unique.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    name: String,
    /// The team it acts for, by id or name.
    team: String,
    /// Its role in the team: `owner`, `member` or `viewer`.
    #[schema(value_type = TeamRoleName)]
    role: String,
    /// The common name of its client certificate, issued by the CA an `api` listener
    /// trusts (`client_ca`). Without it, the controller issues a certificate from its
    /// own CA (common name `service-account.NAME.RANDOM`) and returns it, with its key,
    /// once.
    subject: Option<String>,
}

/// A service account.
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub name: String,
    pub team_id: String,
    pub role: TeamRoleName,
    /// The common name of the client certificate it authenticates with.
    pub subject: String,
    /// The serial of the certificate the controller issued it (revoked when the account
    /// is deleted).
    pub certificate_serial: Option<String>,
    pub created_at: String,
}

impl From<&ServiceAccount> for AccountView {
    fn from(a: &ServiceAccount) -> Self {
        AccountView {
            id: a.id.clone(),
            name: a.name.clone(),
            team_id: a.team_id.clone(),
            role: a.role.into(),
            subject: a.subject.clone(),
            certificate_serial: a.cert_serial.clone(),
            created_at: crate::certs::format_unix(a.created_at),
        }
    }
}

/// A new service account; with the certificate the controller issued it (PEM), its key
/// and the CA that signed it: shown this once, the key never stored.
#[derive(Serialize, ToSchema)]
pub struct CreatedAccountView {
    #[serde(flatten)]
    pub account: AccountView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

/// The service accounts (admins).
#[utoipa::path(operation_id = "list_service_accounts", get, path = "/v1/service-accounts", tag = "service accounts",
    responses(
        (status = 200, description = "The service accounts", body = Vec<AccountView>),
        (status = 403, description = "Not an admin"),
    ))]
pub async fn list(State(s): State<ApiState>, Caller(me): Caller) -> Result<Response, ApiError> {
    let accounts = s.fleet.accounts(&me).await?;
    Ok(ok(accounts
        .iter()
        .map(AccountView::from)
        .collect::<Vec<_>>()))
}

/// Create a service account (admins), with a subject of the operator's PKI or a
/// certificate the controller issues.
#[utoipa::path(operation_id = "create_service_account", post, path = "/v1/service-accounts", tag = "service accounts", request_body = CreateAccount,
    responses(
        (status = 201, description = "Created; with its certificate and key when the controller issued them", body = CreatedAccountView),
        (status = 403, description = "Not an admin"),
        (status = 409, description = "The name or subject is taken"),
        (status = 422, description = "Invalid name, team, role or subject"),
    ))]
pub async fn create(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Body(body): Body<CreateAccount>,
) -> Result<Response, ApiError> {
    let new = NewAccount {
        name: body.name,
        team: body.team,
        role: body.role,
        subject: body.subject,
    };
    let (account, issued) = s.fleet.create_account(&me, new).await?;
    Ok(created(CreatedAccountView {
        account: AccountView::from(&account),
        certificate: issued.as_ref().map(|i| i.cert_pem.clone()),
        private_key: issued.as_ref().map(|i| i.key_pem.clone()),
        ca_certificate: issued.map(|i| i.ca_pem),
    }))
}

/// A service account (admins).
#[utoipa::path(operation_id = "get_service_account", get, path = "/v1/service-accounts/{id}", tag = "service accounts", params(("id" = String, Path)),
    responses(
        (status = 200, description = "The service account", body = AccountView),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such service account"),
    ))]
pub async fn get(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<AccountId>,
) -> Result<Response, ApiError> {
    Ok(ok(AccountView::from(&s.fleet.account(&me, &id).await?)))
}

/// Delete a service account (admins): it stops working at once, and a certificate the
/// controller issued it is revoked.
#[utoipa::path(operation_id = "delete_service_account", delete, path = "/v1/service-accounts/{id}", tag = "service accounts", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such service account"),
    ))]
pub async fn delete(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<AccountId>,
) -> Result<Response, ApiError> {
    s.fleet.delete_account(&me, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
