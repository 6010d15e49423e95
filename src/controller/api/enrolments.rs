//! Enrolment: admins issue one-time tokens (`/v1/enrolment-tokens`) and decide requests
//! (`/v1/enrolments`); on appliance listeners, an appliance without a certificate yet
//! sends its request (`POST /v1/enrolment-requests`) and polls it
//! (`GET /v1/enrolment-requests/:id`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Body, Caller, Id, Params};
use super::views::{created, ok};
use super::{ApiError, ApiState};
use crate::controller::enrolments::{Enrolment, EnrolmentState, EnrolmentToken};
use crate::controller::fleet::FleetError;
use crate::controller::fleet::enrolments::{EnrolmentRequest, TokenIssued};
use crate::controller::fleet::ids::{EnrolmentId, EnrolmentTokenId};
use crate::transport::ConnInfo;

/// Requests to join one source address may make per minute; more are answered 429.
pub const REQUESTS_PER_MINUTE: u32 = 30;

/// A token to issue.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The team the appliance will belong to, by id or name.
    team: String,
    /// How long the token may be used: 1 s to 7 days (default 3600).
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    ttl_seconds: Option<u32>,
    /// Accept the appliance's request at once (default: it waits for an admin).
    #[serde(default)]
    auto_accept: bool,
}

/// A token as issued: the token itself is shown in this answer only.
#[derive(Serialize, ToSchema)]
pub struct IssuedTokenView {
    pub id: String,
    pub token: String,
    pub team_id: String,
    pub auto_accept: bool,
    pub expires_at: String,
    /// `sha256:` and the hex SHA-256 of the controller's CA certificate (DER).
    pub ca_fingerprint: String,
    /// The command that enrols an appliance with it.
    pub command: String,
}

impl From<&TokenIssued> for IssuedTokenView {
    fn from(t: &TokenIssued) -> Self {
        IssuedTokenView {
            id: t.record.id.clone(),
            token: t.token.clone(),
            team_id: t.record.team_id.clone(),
            auto_accept: t.record.auto_accept,
            expires_at: crate::certs::format_unix(t.record.expires_at),
            ca_fingerprint: t.ca_fingerprint.clone(),
            command: t.command.clone(),
        }
    }
}

/// A token as kept (never the token).
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub team_id: String,
    pub auto_accept: bool,
    pub created_at: String,
    pub expires_at: String,
    pub used_at: Option<String>,
    /// The appliance whose machine it was issued for (a cloud backend's own tokens).
    pub appliance_id: Option<String>,
}

impl From<&EnrolmentToken> for TokenView {
    fn from(t: &EnrolmentToken) -> Self {
        TokenView {
            id: t.id.clone(),
            team_id: t.team_id.clone(),
            auto_accept: t.auto_accept,
            created_at: crate::certs::format_unix(t.created_at),
            expires_at: crate::certs::format_unix(t.expires_at),
            used_at: t.used_at.map(crate::certs::format_unix),
            appliance_id: t.appliance_id.clone(),
        }
    }
}

/// A request to join, as admins see it.
#[derive(Serialize, ToSchema)]
pub struct EnrolmentView {
    pub id: String,
    pub team_id: String,
    /// `pending`, `accepted` or `rejected`.
    pub state: String,
    pub name: String,
    /// Where the controller reaches the agent.
    pub address: String,
    pub port: i64,
    /// Where the request came from.
    pub peer_address: String,
    /// The appliance's key: its algorithm and SHA-256 fingerprint (of the
    /// SubjectPublicKeyInfo).
    pub key_algorithm: String,
    pub key_fingerprint: String,
    /// The appliance it became, once accepted.
    pub appliance_id: Option<String>,
    pub created_at: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
}

impl From<&Enrolment> for EnrolmentView {
    fn from(e: &Enrolment) -> Self {
        EnrolmentView {
            id: e.id.clone(),
            team_id: e.team_id.clone(),
            state: e.state.as_str().to_string(),
            name: e.name.clone(),
            address: e.address.clone(),
            port: e.agent_port,
            peer_address: e.peer_address.clone(),
            key_algorithm: e.key_algorithm.clone(),
            key_fingerprint: e.fingerprint.clone(),
            appliance_id: e.appliance_id.clone(),
            created_at: crate::certs::format_unix(e.created_at),
            decided_at: e.decided_at.map(crate::certs::format_unix),
            decided_by: e.decided_by.clone(),
        }
    }
}

/// What an appliance sends to join.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentBody {
    /// The one-time token an admin issued.
    token: String,
    /// A PEM certificate signing request for the key the appliance made (ECDSA P-256
    /// or P-384, Ed25519, or RSA of at least 2048 bits).
    csr: String,
    /// The address its agent listens on; absent or unspecified: the address the
    /// request comes from.
    address: Option<String>,
    /// The agent's port (default 443).
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    port: Option<u16>,
    /// Its name (default: from its key's fingerprint).
    name: Option<String>,
}

/// A request to join, as its appliance polls it: once accepted, its certificate.
#[derive(Serialize, ToSchema)]
pub struct EnrolmentStatus {
    pub id: String,
    /// `pending`, `accepted` or `rejected`.
    pub state: String,
    pub appliance_id: Option<String>,
    /// Once accepted: the certificate chain (leaf, then the CA), PEM.
    pub certificate: Option<String>,
    /// The controller's CA certificate, PEM.
    pub ca: String,
    /// How often the agent reports (`heartbeat`), in milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// Filters of the list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the requests in this state.
    #[param(inline)]
    state: Option<StateName>,
}

/// Where a request to join is.
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum StateName {
    Pending,
    Accepted,
    Rejected,
}

impl From<StateName> for EnrolmentState {
    fn from(s: StateName) -> Self {
        match s {
            StateName::Pending => EnrolmentState::Pending,
            StateName::Accepted => EnrolmentState::Accepted,
            StateName::Rejected => EnrolmentState::Rejected,
        }
    }
}

/// Issue a one-time enrolment token for a team (admins).
#[utoipa::path(operation_id = "create_enrolment_token", post, path = "/v1/enrolment-tokens", tag = "enrolment", request_body = CreateToken,
    responses(
        (status = 201, description = "Issued: the token (shown once) and the command to run on the appliance", body = IssuedTokenView),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "No such team, or a lifetime out of range"),
    ))]
pub async fn create_token(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Body(body): Body<CreateToken>,
) -> Result<Response, ApiError> {
    let issued = s
        .fleet
        .issue_enrolment_token(&me, &body.team, body.ttl_seconds, body.auto_accept)
        .await?;
    Ok(created(IssuedTokenView::from(&issued)))
}

/// The enrolment tokens, newest first (admins; never the tokens themselves).
#[utoipa::path(operation_id = "list_enrolment_tokens", get, path = "/v1/enrolment-tokens", tag = "enrolment",
    responses(
        (status = 200, description = "The tokens", body = Vec<TokenView>),
        (status = 403, description = "Not an admin"),
    ))]
pub async fn list_tokens(
    State(s): State<ApiState>,
    Caller(me): Caller,
) -> Result<Response, ApiError> {
    let tokens = s.fleet.enrolment_tokens(&me).await?;
    Ok(ok(tokens.iter().map(TokenView::from).collect::<Vec<_>>()))
}

/// Delete an enrolment token: unused, it can no longer be used (admins).
#[utoipa::path(operation_id = "delete_enrolment_token", delete, path = "/v1/enrolment-tokens/{id}", tag = "enrolment", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such token"),
    ))]
pub async fn delete_token(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<EnrolmentTokenId>,
) -> Result<Response, ApiError> {
    s.fleet.delete_enrolment_token(&me, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Requests to join, newest first (admins).
#[utoipa::path(operation_id = "list_enrolments", get, path = "/v1/enrolments", tag = "enrolment", params(ListQuery),
    responses(
        (status = 200, description = "The requests", body = Vec<EnrolmentView>),
        (status = 403, description = "Not an admin"),
    ))]
pub async fn list(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Params(q): Params<ListQuery>,
) -> Result<Response, ApiError> {
    let list = s.fleet.enrolments(&me, q.state.map(Into::into)).await?;
    Ok(ok(list.iter().map(EnrolmentView::from).collect::<Vec<_>>()))
}

/// Accept a pending request: its appliance is recorded, active, in the token's team
/// (admins).
#[utoipa::path(operation_id = "accept_enrolment", post, path = "/v1/enrolments/{id}/accept", tag = "enrolment", params(("id" = String, Path)),
    responses(
        (status = 200, description = "Accepted", body = EnrolmentView),
        (status = 403, description = "Not an admin, or the team's appliance quota is reached"),
        (status = 404, description = "No such request"),
        (status = 409, description = "Decided already"),
    ))]
pub async fn accept(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<EnrolmentId>,
) -> Result<Response, ApiError> {
    Ok(ok(EnrolmentView::from(
        &s.fleet.accept_enrolment(&me, &id).await?,
    )))
}

/// Reject a pending request (admins).
#[utoipa::path(operation_id = "reject_enrolment", post, path = "/v1/enrolments/{id}/reject", tag = "enrolment", params(("id" = String, Path)),
    responses(
        (status = 200, description = "Rejected", body = EnrolmentView),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such request"),
        (status = 409, description = "Decided already"),
    ))]
pub async fn reject(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(id): Id<EnrolmentId>,
) -> Result<Response, ApiError> {
    Ok(ok(EnrolmentView::from(
        &s.fleet.reject_enrolment(&me, &id).await?,
    )))
}

/// An appliance asks to join (appliance listeners; no client certificate needed, the
/// token is the credential).
#[utoipa::path(operation_id = "submit_enrolment", post, path = "/v1/enrolment-requests", tag = "appliance zone", request_body = EnrolmentBody,
    security(()),
    responses(
        (status = 201, description = "Accepted at once: the certificate", body = EnrolmentStatus),
        (status = 202, description = "Waiting for an admin: poll `Location`", body = EnrolmentStatus),
        (status = 401, description = "Unknown, used or expired token"),
        (status = 422, description = "A bad request: its key too weak, its signature wrong, its address or name invalid"),
        (status = 429, description = "Too many requests from this address, or waiting"),
    ))]
pub async fn submit(State(s): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    let peer = req
        .extensions()
        .get::<Arc<ConnInfo>>()
        .map(|c| c.peer.ip())
        .ok_or_else(|| ApiError::from(FleetError::Internal("no connection information".into())))?;
    if !admit(peer) {
        return Err(FleetError::TooManyRequests(format!(
            "more than {REQUESTS_PER_MINUTE} requests to join from {peer} in a minute; try again later"
        ))
        .into());
    }
    let Body(body) = Body::<EnrolmentBody>::from_request(req, &s).await?;
    let address = match body.address.as_deref() {
        None => None,
        Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
            ApiError::from(FleetError::Invalid(format!(
                "address {a:?}: not an IP address"
            )))
        })?),
    };
    let e = s
        .fleet
        .submit_enrolment(
            peer,
            EnrolmentRequest {
                token: body.token,
                csr: body.csr,
                address,
                port: body.port.unwrap_or(443),
                name: body.name,
            },
        )
        .await?;
    let status = if e.state == EnrolmentState::Accepted {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let mut r = (status, axum::Json(status_view(&s, &e))).into_response();
    if let Ok(v) = http::HeaderValue::from_str(&format!("/v1/enrolment-requests/{}", e.id)) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(r)
}

/// A request to join, as its appliance polls it (appliance listeners; its id is known
/// to the appliance only).
#[utoipa::path(operation_id = "poll_enrolment", get, path = "/v1/enrolment-requests/{id}", tag = "appliance zone", params(("id" = String, Path)),
    security(()),
    responses(
        (status = 200, description = "The request: once accepted, the certificate", body = EnrolmentStatus),
        (status = 404, description = "No such request"),
    ))]
pub async fn poll(
    State(s): State<ApiState>,
    Id(id): Id<EnrolmentId>,
) -> Result<Response, ApiError> {
    let e = s.fleet.enrolment(&id).await?;
    Ok(ok(status_view(&s, &e)))
}

fn status_view(s: &ApiState, e: &Enrolment) -> EnrolmentStatus {
    EnrolmentStatus {
        id: e.id.clone(),
        state: e.state.as_str().to_string(),
        appliance_id: e.appliance_id.clone(),
        certificate: e.certificate.clone(),
        ca: s.fleet.ca.ca_pem().to_string(),
        heartbeat_interval_ms: u64::try_from(
            s.fleet.config().appliances.heartbeat_interval.0.as_millis(),
        )
        .unwrap_or(u64::MAX),
    }
}

/// What requests are counted by: an IPv4 address (an IPv4-mapped one as such), or an
/// IPv6 address's /64.
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// Whether `peer` may make one more request to join this minute. IPv6 addresses count
/// by their /64 (one host usually has a whole one). When the table is full, the address
/// whose minute started longest ago is forgotten.
fn admit(peer: IpAddr) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<IpAddr, (Instant, u32)>>> = OnceLock::new();
    const WINDOW: Duration = Duration::from_secs(60);
    const MAX_SOURCES: usize = 4096;
    let source = source_of(peer);
    let now = Instant::now();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if seen.len() >= MAX_SOURCES && !seen.contains_key(&source) {
        seen.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
        if seen.len() >= MAX_SOURCES
            && let Some(oldest) = seen
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(k, _)| *k)
        {
            seen.remove(&oldest);
        }
    }
    let entry = seen.entry(source).or_insert((now, 0));
    if now.duration_since(entry.0) >= WINDOW {
        *entry = (now, 0);
    }
    entry.1 += 1;
    entry.1 <= REQUESTS_PER_MINUTE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_per_ipv4_address_and_per_ipv6_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            source_of(ip("2001:db8:7357:1:aaaa::1")),
            ip("2001:db8:7357:1::")
        );
        // One host rotating through its /64 is one source; the next /64 another.
        for i in 0..REQUESTS_PER_MINUTE {
            assert!(admit(ip(&format!("2001:db8:7357:2::{:x}", i + 1))), "{i}");
        }
        assert!(!admit(ip("2001:db8:7357:2:ffff::1")));
        assert!(admit(ip("2001:db8:7357:3::1")));
    }
}
