//! Extractors: who is calling (a user by token or certificate, a user by password, an
//! appliance by its certificate), and request bodies, queries and path ids read strictly
//! and within limits.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use base64::Engine;
use http::header;
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use super::{ApiError, ApiState, BODY_TIMEOUT, MAX_BODY};
use crate::controller::fleet::FleetError;
use crate::controller::fleet::teams::Principal;
use crate::controller::store::User;
use crate::transport::ConnInfo;

/// The common name of the verified client certificate of an admin-zone request.
#[derive(Clone)]
pub struct CertificateName(pub String);

/// A request on an `api` listener, with the common name of its verified client
/// certificate, if it has one: only a service account's certificate authenticates there.
#[derive(Clone)]
pub struct AccountCertificate(pub Option<String>);

/// Refuses password and token logins on `api` listeners.
fn certificates_only(parts: &Parts) -> Result<(), ApiError> {
    if parts.extensions.get::<AccountCertificate>().is_some() {
        return Err(FleetError::Unauthorized(
            "api listeners take service accounts' client certificates only",
        )
        .into());
    }
    Ok(())
}

/// Where the caller's extractor leaves the acting user's name, which the request line
/// then names (attribution).
#[derive(Clone, Default)]
pub struct ActorSlot(pub Arc<std::sync::OnceLock<String>>);

impl ActorSlot {
    fn record(parts: &Parts, name: &str) {
        if let Some(slot) = parts.extensions.get::<ActorSlot>() {
            let _ = slot.0.set(name.to_string());
        }
    }
}

fn credentials<'a>(parts: &'a Parts, scheme: &str) -> Option<&'a str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_at_checked(scheme.len())?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Who a request acts for: the user of its bearer token, or of its client certificate,
/// with its teams.
pub struct Caller(pub Principal);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        if let Some(AccountCertificate(subject)) = parts.extensions.get::<AccountCertificate>() {
            let subject = subject.as_deref().ok_or(FleetError::Unauthorized(
                "a service account's client certificate is required",
            ))?;
            let caller = state.fleet.authenticate_account(subject).await?;
            ActorSlot::record(parts, &caller.name);
            return Ok(Caller(caller));
        }
        let token = credentials(parts, "Bearer ");
        let certificate = parts
            .extensions
            .get::<CertificateName>()
            .map(|c| c.0.as_str());
        let caller = state.fleet.authenticate(token, certificate).await?;
        ActorSlot::record(parts, &caller.name);
        Ok(Caller(caller))
    }
}

/// The bearer token of a request, once it authenticates a user (to log it out).
pub struct TokenCaller(pub String);

impl FromRequestParts<ApiState> for TokenCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        certificates_only(parts)?;
        let token = credentials(parts, "Bearer ")
            .ok_or(FleetError::Unauthorized("a bearer token is required"))?;
        let caller = state.fleet.authenticate(Some(token), None).await?;
        ActorSlot::record(parts, &caller.name);
        Ok(TokenCaller(token.to_string()))
    }
}

/// The user a request's basic credentials (name and password) belong to.
pub struct PasswordCaller(pub User);

impl FromRequestParts<ApiState> for PasswordCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        certificates_only(parts)?;
        let malformed = FleetError::Unauthorized("malformed basic credentials");
        let encoded = credentials(parts, "Basic ")
            .ok_or(FleetError::Unauthorized("basic authentication is required"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| FleetError::Unauthorized("malformed basic credentials"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| FleetError::Unauthorized("malformed basic credentials"))?;
        let (name, password) = text.split_once(':').ok_or(malformed)?;
        let user = state.fleet.authenticate_password(name, password).await?;
        ActorSlot::record(parts, &user.name);
        Ok(PasswordCaller(user))
    }
}

/// The appliance a callback comes from: the one its verified certificate names.
pub struct ApplianceCaller(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApplianceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Arc<ConnInfo>>()
            .and_then(|c| c.identity.as_ref())
            .and_then(|i| i.cn.clone())
            .map(ApplianceCaller)
            .ok_or(ApiError::NoApplianceCertificate)
    }
}

/// A path id, typed (an appliance's, a user's or a task's): one segment; an
/// undecodable one names nothing.
pub struct Id<T>(pub T);

impl<T: From<String>, S: Send + Sync> FromRequestParts<S> for Id<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NoRoute)?;
        Ok(Id(T::from(id)))
    }
}

/// Two path ids, typed (a team's and a member's).
pub struct Ids<A, B>(pub A, pub B);

impl<A: From<String>, B: From<String>, S: Send + Sync> FromRequestParts<S> for Ids<A, B> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((a, b)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NoRoute)?;
        Ok(Ids(A::from(a), B::from(b)))
    }
}

/// The query, read as `T`; what does not fit is 400.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Query(v) = Query::<T>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::Malformed(format!("query: {}", e.body_text())))?;
        Ok(Params(v))
    }
}

/// Reads a request body within `max` bytes and [`BODY_TIMEOUT`]: refused before
/// reading when the declared length is already too large.
pub async fn read_body(req: Request, max: usize) -> Result<bytes::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Ok(Err(e)) => Err(ApiError::Malformed(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// A body that is a JSON object (not an array, even of the right length, nor any other
/// value) with no unknown field.
pub fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Malformed(
            "a JSON object is required as the request body".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::Malformed(format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::Malformed(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Malformed(format!("invalid JSON: {e}")))
}

/// A required JSON object body, at most [`MAX_BODY`] bytes.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        parse_object(&read_body(req, MAX_BODY).await?).map(Body)
    }
}

/// An optional JSON object body: none at all means the defaults.
pub struct OptionalBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let body = read_body(req, MAX_BODY).await?;
        if body.is_empty() {
            Ok(OptionalBody(T::default()))
        } else {
            parse_object(&body).map(OptionalBody)
        }
    }
}

/// An optional whole number in a body: `5` or `5.0` (JSON does not tell them apart),
/// never `5.5`, a string or a number out of range.
pub fn whole_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => Some(i),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
        _ => None,
    };
    whole
        .and_then(|i| T::try_from(i).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number in range")))
}

/// A field that may be absent (`None`: leave it), `null` (`Some(None)`: clear it), or a
/// value; with `#[serde(default)]`.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(d).map(Some)
}

/// [`nullable`] for whole numbers (see [`whole_number`]).
pub fn nullable_whole_number<'de, D>(d: D) -> Result<Option<Option<i64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    whole_number(d).map(Some)
}
