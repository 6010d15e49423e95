//! The northbound API (`/v1`, JSON) as served on `admin` listeners.
//!
//! ```text
//! POST   /v1/tokens       basic auth -> {"token", "expires_at"}; body {"ttl_seconds"} optional
//! GET    /v1/users        admin: list
//! POST   /v1/users        admin: {"name", "role"?, "password"?} -> 201 (a generated password is returned once)
//! GET    /v1/users/:id    admin, or the user itself
//! DELETE /v1/users/:id    admin -> 204
//! ```
//! Errors are RFC 9457 problem documents with a stable `type`. Routes are parsed by a
//! pure function; statuses come from one exhaustive match.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::{Deserialize, Serialize};

use super::auth;
use super::fleet::{Fleet, FleetError};
use super::store::{Role, Store, StoreError, User};
use crate::config::controller::Zone;
use crate::transport::{App, ConnInfo};

/// Default and longest lifetime of a bearer token.
pub const TOKEN_TTL_DEFAULT: i64 = 8 * 3600;
pub const TOKEN_TTL_MAX: i64 = 24 * 3600;
/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreateToken,
    ListUsers,
    CreateUser,
    GetUser(String),
    DeleteUser(String),
    ListAppliances,
    CreateAppliance,
    GetAppliance(String),
    DeleteAppliance(String),
    ApplianceAction(String),
    ApplianceEvents(String),
    PingOne(String),
    PingMany,
    /// `/v1/appliances/:id/agent` + the agent path (with its query).
    Agent(String, String),
    ListTasks,
    GetTask(String),
    OpenApi,
    /// Appliance zone: a callback from the appliance itself.
    Callback,
}

impl Route {
    pub fn label(&self) -> &'static str {
        match self {
            Route::CreateToken => "/v1/tokens",
            Route::ListUsers | Route::CreateUser => "/v1/users",
            Route::GetUser(_) | Route::DeleteUser(_) => "/v1/users/:id",
            Route::ListAppliances | Route::CreateAppliance => "/v1/appliances",
            Route::GetAppliance(_) | Route::DeleteAppliance(_) => "/v1/appliances/:id",
            Route::ApplianceAction(_) => "/v1/appliances/:id/actions",
            Route::ApplianceEvents(_) => "/v1/appliances/:id/events",
            Route::PingOne(_) => "/v1/appliances/:id/ping",
            Route::PingMany => "/v1/ping",
            Route::Agent(..) => "/v1/appliances/:id/agent/*",
            Route::ListTasks => "/v1/tasks",
            Route::GetTask(_) => "/v1/tasks/:id",
            Route::OpenApi => "/v1/openapi.json",
            Route::Callback => "/v1/events",
        }
    }
}

/// Maps a request line to a route of the appliance zone.
pub fn parse_appliance_zone(method: &Method, path: &str) -> Option<Route> {
    (method == Method::POST && path.trim_end_matches('/') == "/v1/events")
        .then_some(Route::Callback)
}

/// Maps a request line (path and query) to a route of the admin zone.
pub fn parse(method: &Method, path_and_query: &str) -> Option<Route> {
    let path = path_and_query.split('?').next().unwrap_or("");
    // The pass-through keeps the rest of the path and the query as they came.
    if let Some(rest) = path_and_query.strip_prefix("/v1/appliances/")
        && let Some((id, agent_path)) = rest.split_once("/agent")
        && !id.is_empty()
        && !id.contains('/')
        && (agent_path.is_empty() || agent_path.starts_with('/') || agent_path.starts_with('?'))
    {
        let agent_path = if agent_path.starts_with('/') {
            agent_path.to_string()
        } else {
            format!("/{agent_path}")
        };
        return Some(Route::Agent(id.to_string(), agent_path));
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let own = |s: &&str| (*s).to_string();
    match (method, segments.as_slice()) {
        (&Method::GET, ["v1", "appliances"]) => Some(Route::ListAppliances),
        (&Method::POST, ["v1", "appliances"]) => Some(Route::CreateAppliance),
        (&Method::GET, ["v1", "appliances", id]) => Some(Route::GetAppliance(own(id))),
        (&Method::DELETE, ["v1", "appliances", id]) => Some(Route::DeleteAppliance(own(id))),
        (&Method::POST, ["v1", "appliances", id, "actions"]) => {
            Some(Route::ApplianceAction(own(id)))
        }
        (&Method::GET, ["v1", "appliances", id, "events"]) => Some(Route::ApplianceEvents(own(id))),
        (&Method::POST, ["v1", "appliances", id, "ping"]) => Some(Route::PingOne(own(id))),
        (&Method::POST, ["v1", "ping"]) => Some(Route::PingMany),
        (&Method::GET, ["v1", "tasks"]) => Some(Route::ListTasks),
        (&Method::GET, ["v1", "tasks", id]) => Some(Route::GetTask(own(id))),
        (&Method::GET, ["v1", "openapi.json"]) => Some(Route::OpenApi),
        (&Method::POST, ["v1", "tokens"]) => Some(Route::CreateToken),
        (&Method::GET, ["v1", "users"]) => Some(Route::ListUsers),
        (&Method::POST, ["v1", "users"]) => Some(Route::CreateUser),
        (&Method::GET, ["v1", "users", id]) => Some(Route::GetUser((*id).to_string())),
        (&Method::DELETE, ["v1", "users", id]) => Some(Route::DeleteUser((*id).to_string())),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this needs the admin role")]
    Forbidden,
    #[error("the agent pass-through is read-only for members: writes need the admin role")]
    PassThroughReadOnly,
    #[error("{0}")]
    Fleet(#[from] FleetError),
    #[error("no such resource")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request body not received in time")]
    BodyTimeout,
    /// Logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::PassThroughReadOnly => StatusCode::FORBIDDEN,
            ApiError::Fleet(e) => e.status(),
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `type` of the problem document.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::PassThroughReadOnly => "pass-through-read-only",
            ApiError::Fleet(e) => e.kind(),
            ApiError::NotFound => "not-found",
            ApiError::BadRequest(_) => "invalid-input",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge => "payload-too-large",
            ApiError::BodyTimeout => "request-timeout",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[derive(Serialize)]
struct UserView {
    id: String,
    name: String,
    role: &'static str,
    created_at: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id.clone(),
            name: u.name.clone(),
            role: u.role.as_str(),
            created_at: crate::certs::format_unix(u.created_at),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    ttl_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// One listener of the controller.
pub struct ControllerApp {
    pub store: Arc<Store>,
    pub fleet: Arc<Fleet>,
    pub zone: Zone,
}

/// A response: status, body, and extra headers (`Location`, `Retry-After`).
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: &'static str,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl From<(StatusCode, Bytes)> for Answer {
    fn from((status, body): (StatusCode, Bytes)) -> Self {
        Answer {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
        }
    }
}

impl App for ControllerApp {
    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| path.clone());
        let actor = ActorSlot::default();
        req.extensions_mut().insert(actor.clone());
        if self.zone == Zone::Admin
            && let Some(cn) = conn.identity.as_ref().and_then(|i| i.cn.clone())
        {
            req.extensions_mut().insert(CertificateName(cn));
        }
        let route = match self.zone {
            Zone::Admin => parse(&method, &path_and_query),
            Zone::Appliance => parse_appliance_zone(&method, &path),
            // Integrations (service accounts) are not served yet.
            Zone::Api => None,
        };
        let label = route.as_ref().map(Route::label).unwrap_or("(unknown)");
        let result = match route {
            Some(Route::Callback) => self.callback(req, &conn).await.map(Answer::from),
            Some(
                route @ (Route::CreateToken
                | Route::ListUsers
                | Route::CreateUser
                | Route::GetUser(_)
                | Route::DeleteUser(_)),
            ) => self.dispatch(route, req).await.map(Answer::from),
            Some(route) => super::fleet_api::dispatch(&self, route, req).await,
            None => Err(ApiError::NotFound),
        };
        if let Err(ApiError::Internal(detail)) = &result {
            tracing::error!(%method, %path, error = %detail, "internal error");
        }
        let response = match result {
            Ok(answer) => {
                let mut r = json_response(answer.status, answer.content_type, answer.body);
                for (name, value) in answer.headers {
                    r.headers_mut().insert(name, value);
                }
                r
            }
            Err(e) => problem(&e, &path),
        };
        tracing::info!(
            peer = %conn.peer,
            client = %conn.identity.as_ref().map(|i| i.name()).unwrap_or("-"),
            actor = %actor.0.get().map(String::as_str).unwrap_or("-"),
            method = %method,
            path = %path,
            route = %label,
            status = response.status().as_u16(),
            duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
        response
    }
}

impl ControllerApp {
    /// `POST /v1/events` on the appliance zone: the caller is the appliance its verified
    /// certificate names.
    async fn callback(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let caller = conn
            .identity
            .as_ref()
            .and_then(|i| i.cn.clone())
            .ok_or(ApiError::Fleet(FleetError::Forbidden(
                "a client certificate naming the appliance is required".into(),
            )))?;
        let callback: super::fleet::Callback = json(&read_body(req).await?)?;
        let a = self.fleet.callback(&caller, callback).await?;
        Ok(ok(
            &serde_json::json!({"id": a.id, "state": a.state.as_str()}),
        ))
    }

    pub(super) async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let now = crate::certs::now_unix();
        match route {
            Route::CreateToken => {
                let user = self.basic_auth(req.headers()).await?;
                ActorSlot::record(&req, &user);
                let body = read_body(req).await?;
                let ask: TokenRequest = json_or_default(&body)?;
                let ttl = ask.ttl_seconds.unwrap_or(TOKEN_TTL_DEFAULT);
                if ttl <= 0 {
                    return Err(ApiError::BadRequest("ttl_seconds must be positive".into()));
                }
                let expires_at = now + ttl.min(TOKEN_TTL_MAX);
                let (token, hash) = auth::new_token();
                self.store
                    .insert_token(&user.id, &hash, now, expires_at)
                    .await?;
                let _ = self.store.delete_expired_tokens(now).await;
                Ok(created(&serde_json::json!({
                    "token": token,
                    "token_type": "Bearer",
                    "expires_at": crate::certs::format_unix(expires_at),
                    "user": UserView::from(&user),
                })))
            }
            Route::ListUsers => {
                self.admin(&req, now).await?;
                let users = self.store.users().await?;
                Ok(ok(&users.iter().map(UserView::from).collect::<Vec<_>>()))
            }
            Route::CreateUser => {
                self.admin(&req, now).await?;
                let new: CreateUser = json(&read_body(req).await?)?;
                let name = auth::check_user_name(&new.name).map_err(ApiError::BadRequest)?;
                let role = match new.role.as_deref() {
                    None | Some("member") => Role::Member,
                    Some("admin") => Role::Admin,
                    Some(other) => {
                        return Err(ApiError::BadRequest(format!(
                            "role {other:?}: admin or member"
                        )));
                    }
                };
                let (password, generated) = match new.password {
                    Some(p) if p.len() >= 12 => (p, false),
                    Some(_) => {
                        return Err(ApiError::BadRequest(
                            "password: at least 12 characters".into(),
                        ));
                    }
                    None => (auth::generate_password(), true),
                };
                let hash = {
                    let password = password.clone();
                    blocking(move || auth::hash_password(&password)).await?
                };
                let user = self.store.create_user(name, role, &hash, now).await?;
                let mut body = serde_json::to_value(UserView::from(&user)).unwrap_or_default();
                if generated {
                    body["password"] = serde_json::Value::String(password);
                }
                Ok(created(&body))
            }
            Route::GetUser(id) => {
                let caller = self.caller(&req, now).await?;
                if caller.role != Role::Admin && caller.id != id {
                    return Err(ApiError::Forbidden);
                }
                let user = self.store.user(&id).await?.ok_or(ApiError::NotFound)?;
                Ok(ok(&UserView::from(&user)))
            }
            Route::DeleteUser(id) => {
                self.admin(&req, now).await?;
                if !self.store.delete_user(&id).await? {
                    return Err(ApiError::NotFound);
                }
                Ok((StatusCode::NO_CONTENT, Bytes::new()))
            }
            // Served by `fleet_api`.
            _ => Err(ApiError::NotFound),
        }
    }

    async fn basic_auth(&self, headers: &http::HeaderMap) -> Result<User, ApiError> {
        let refused = ApiError::Unauthorized(
            "basic authentication with a valid user and password is required",
        );
        let encoded = credentials(headers, "Basic ")
            .ok_or(ApiError::Unauthorized("basic authentication is required"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| ApiError::Unauthorized("malformed basic credentials"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| ApiError::Unauthorized("malformed basic credentials"))?;
        let (name, password) = text
            .split_once(':')
            .ok_or(ApiError::Unauthorized("malformed basic credentials"))?;
        let user = self.store.user_by_name(name).await?;
        // The hash is computed whether or not the user exists, so timing tells nothing;
        // PBKDF2 is deliberately slow, so it runs on the blocking pool.
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let password = password.to_string();
        let valid = blocking(move || {
            auth::verify_password(&password, stored.as_deref().unwrap_or_else(|| dummy_hash()))
        })
        .await?;
        match user {
            Some(u) if valid => Ok(u),
            _ => Err(refused),
        }
    }

    /// The user making a request on the admin zone: the owner of its bearer token, or
    /// without one, the user its verified client certificate names (CN = user name).
    /// A token and a certificate naming different users are refused.
    pub(super) async fn caller(&self, req: &Request<Incoming>, now: i64) -> Result<User, ApiError> {
        let user = self.caller_of(req, now).await?;
        ActorSlot::record(req, &user);
        Ok(user)
    }

    async fn caller_of(&self, req: &Request<Incoming>, now: i64) -> Result<User, ApiError> {
        let cert_name = req
            .extensions()
            .get::<CertificateName>()
            .map(|c| c.0.as_str());
        let Some(token) = credentials(req.headers(), "Bearer ") else {
            let Some(name) = cert_name else {
                return Err(ApiError::Unauthorized("a bearer token is required"));
            };
            return self
                .store
                .user_by_name(name)
                .await?
                .ok_or(ApiError::Unauthorized(
                    "the client certificate names no user; a bearer token is required",
                ));
        };
        let user = self
            .store
            .user_for_token(&auth::token_hash(token), now)
            .await?
            .ok_or(ApiError::Unauthorized("the token is unknown or expired"))?;
        // Only a certificate naming another existing user contradicts the token.
        if let Some(name) = cert_name
            && name != user.name
            && self.store.user_by_name(name).await?.is_some()
        {
            return Err(ApiError::Unauthorized(
                "the bearer token and the client certificate name different users",
            ));
        }
        Ok(user)
    }

    async fn admin(&self, req: &Request<Incoming>, now: i64) -> Result<User, ApiError> {
        let user = self.caller(req, now).await?;
        if user.role == Role::Admin {
            Ok(user)
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("no such user"))
}

/// Where a request's handler leaves the name of the user it acts for, which the request
/// line then names (attribution).
#[derive(Clone, Default)]
struct ActorSlot(Arc<std::sync::OnceLock<String>>);

impl ActorSlot {
    fn record(req: &Request<Incoming>, user: &User) {
        if let Some(slot) = req.extensions().get::<ActorSlot>() {
            let _ = slot.0.set(user.name.clone());
        }
    }
}

/// The common name of the verified client certificate of an admin-zone request.
#[derive(Clone)]
struct CertificateName(String);

fn credentials<'a>(headers: &'a http::HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_at_checked(scheme.len())?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Time a client has to send a request body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    read_body_limited(req, MAX_BODY as u64).await
}

pub(super) async fn read_body_limited(req: Request<Incoming>, max: u64) -> Result<Bytes, ApiError> {
    use crate::transport::body::{BodyError, read_limited};
    read_limited(req, max, BODY_TIMEOUT)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => ApiError::PayloadTooLarge,
            BodyError::Timeout => ApiError::BodyTimeout,
            BodyError::Read(_) => ApiError::BadRequest(e.to_string()),
        })
}

/// A request body: a JSON object (not an array, even of the right length, nor any other
/// value) with no unknown field.
pub(super) fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "a JSON object is required as the request body".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

/// An optional request body: empty means the defaults; otherwise as [`json`].
pub(super) fn json_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        json(body)
    }
}

pub(super) fn ok(value: &impl Serialize) -> (StatusCode, Bytes) {
    (
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

fn created(value: &impl Serialize) -> (StatusCode, Bytes) {
    (
        StatusCode::CREATED,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

fn problem(e: &ApiError, instance: &str) -> Response<Full<Bytes>> {
    let status = e.status();
    let body = serde_json::json!({
        "type": format!("urn:applianced:problem:{}", e.kind()),
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": e.to_string(),
        "instance": instance,
    });
    let mut r = json_response(
        status,
        "application/problem+json",
        Bytes::from(body.to_string()),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"applianced\", Bearer"),
        );
    }
    r
}

fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if status != StatusCode::NO_CONTENT {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse(&Method::POST, "/v1/tokens"), Some(Route::CreateToken));
        assert_eq!(parse(&Method::GET, "/v1/users/"), Some(Route::ListUsers));
        assert_eq!(
            parse(&Method::DELETE, "/v1/users/abc"),
            Some(Route::DeleteUser("abc".into()))
        );
        assert_eq!(parse(&Method::GET, "/v1/tokens"), None);
        assert_eq!(parse(&Method::PUT, "/v1/users/abc"), None);
        assert_eq!(parse(&Method::GET, "/v1/users/a/b"), None);
    }

    #[test]
    fn credentials_by_scheme() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(credentials(&h, "Bearer "), Some("abc"));
        assert_eq!(credentials(&h, "Basic "), None);
    }
}
