//! The API's one error type and its one exhaustive mapping to status and problem `type`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::controller::fleet::FleetError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// What the fleet refused, or failed at.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// No route for this method and path.
    #[error("no such resource")]
    NoRoute,
    /// A path that is routed, with a method that is not (the answer says which are).
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// A body or query that cannot be read as the route's request type.
    #[error("{0}")]
    Malformed(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request body not received in time")]
    BodyTimeout,
    /// A callback without a client certificate naming the appliance.
    #[error("a client certificate naming the appliance is required")]
    NoApplianceCertificate,
}

impl ApiError {
    /// The status and the problem `type` of every error.
    pub fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Fleet(e) => {
                let (status, kind) = e.status_and_kind();
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    kind,
                )
            }
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            ApiError::Malformed(_) => (StatusCode::BAD_REQUEST, "invalid-input"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request-timeout"),
            ApiError::NoApplianceCertificate => (StatusCode::UNAUTHORIZED, "unauthorized"),
        }
    }

    /// What the problem document says (internals are logged, never shown).
    pub fn detail(&self) -> String {
        match self {
            ApiError::Fleet(e) => e.detail(),
            other => other.to_string(),
        }
    }

    /// The internal cause, for the log.
    pub fn internal(&self) -> Option<&str> {
        match self {
            ApiError::Fleet(FleetError::Internal(cause)) => Some(cause),
            _ => None,
        }
    }
}

/// An error on its way out: the request-line layer turns it into a problem document
/// naming the request's path (`instance`).
#[derive(Clone)]
pub struct Failed(pub Arc<ApiError>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_kind();
        let mut r = status.into_response();
        r.extensions_mut().insert(Failed(Arc::new(self)));
        r
    }
}

/// The RFC 9457 problem document of `e`, for the request to `instance`.
pub fn problem(e: &ApiError, instance: &str) -> Response {
    let (status, kind) = e.status_and_kind();
    let mut body = serde_json::json!({
        "type": format!("urn:applianced:problem:{kind}"),
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": e.detail(),
        "instance": instance,
    });
    if let ApiError::Fleet(fleet) = e {
        crate::controller::fleet::error::merge(&mut body, fleet.extensions());
    }
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    // Credentials of a user: not for a refused enrolment token.
    if status == StatusCode::UNAUTHORIZED && kind == "unauthorized" {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"applianced\", Bearer"),
        );
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // The window of the request limits is a minute.
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    r
}
