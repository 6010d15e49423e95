//! The fleet's one error type, and the problem each error is for whoever reports it.

use serde_json::{Value, json};

use super::ports::BackendError;
use crate::controller::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this needs the admin role")]
    AdminOnly,
    #[error("the agent pass-through is read-only for members: writes need the admin role")]
    PassThroughReadOnly,
    #[error("no such appliance")]
    NotFound,
    #[error("no such resource")]
    NoSuchUser,
    #[error("no such resource")]
    NoSuchTask,
    #[error("no such team")]
    NoSuchTeam,
    #[error("no such key pair")]
    NoSuchKeypair,
    #[error("no such service account")]
    NoSuchAccount,
    #[error("no such invoice")]
    NoSuchInvoice,
    #[error("no such cluster")]
    NoSuchCluster,
    #[error("no such enrolment")]
    NoSuchEnrolment,
    /// An enrolment token that is unknown, used or expired.
    #[error("{0}")]
    EnrolmentRefused(String),
    /// Too many requests from one source, or too many waiting (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// A cluster write a member did not take; every member's outcome.
    #[error("the write did not reach every member of the cluster")]
    ClusterWriteFailed(Value),
    /// No such catalogue entry, region or template (the message names what was asked).
    #[error("{0}")]
    NoSuchEntry(String),
    #[error("{0}")]
    Forbidden(String),
    /// A team's quota would be exceeded.
    #[error("quota exceeded: the team's {quota} is {limit} and {used} are in use")]
    QuotaExceeded {
        quota: &'static str,
        limit: i64,
        used: i64,
    },
    #[error("{0}")]
    Conflict(String),
    /// Malformed input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input with values the fleet refuses (422).
    #[error("{0}")]
    Invalid(String),
    /// The appliance's backend cannot do this at all (409).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => FleetError::Conflict(format!("{what} already exists")),
            other => FleetError::Internal(other.to_string()),
        }
    }
}

impl From<BackendError> for FleetError {
    /// The compute backend failing is a bad gateway; the controller's own files failing
    /// (a full disk) an internal error.
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Local(e) => FleetError::Internal(format!("the appliance's files: {e}")),
            BackendError::Failed(e) => FleetError::BadGateway(format!("backend: {e}")),
            BackendError::NoCapacity(e) => FleetError::NoCapacity(format!("backend: {e}")),
            e @ BackendError::Unsupported { .. } => FleetError::Unsupported(e.to_string()),
        }
    }
}

impl FleetError {
    /// The status code (as HTTP numbers it; the domain names no transport) and the
    /// problem `type` of each error: one exhaustive match.
    pub fn status_and_kind(&self) -> (u16, &'static str) {
        match self {
            FleetError::Unauthorized(_) => (401, "unauthorized"),
            FleetError::AdminOnly => (403, "forbidden"),
            FleetError::PassThroughReadOnly => (403, "pass-through-read-only"),
            FleetError::NotFound
            | FleetError::NoSuchUser
            | FleetError::NoSuchTask
            | FleetError::NoSuchTeam
            | FleetError::NoSuchKeypair
            | FleetError::NoSuchAccount
            | FleetError::NoSuchInvoice
            | FleetError::NoSuchCluster
            | FleetError::NoSuchEnrolment
            | FleetError::NoSuchEntry(_) => (404, "not-found"),
            FleetError::EnrolmentRefused(_) => (401, "enrolment-refused"),
            FleetError::TooManyRequests(_) => (429, "too-many-requests"),
            FleetError::Forbidden(_) => (403, "forbidden"),
            FleetError::QuotaExceeded { .. } => (403, "quota-exceeded"),
            FleetError::Conflict(_) => (409, "conflict"),
            FleetError::BadRequest(_) => (400, "invalid-input"),
            FleetError::Invalid(_) => (422, "invalid-input"),
            FleetError::Unsupported(_) => (409, "not-supported-by-backend"),
            FleetError::BadGateway(_) | FleetError::ClusterWriteFailed(_) => (502, "bad-gateway"),
            FleetError::NoCapacity(_) => (503, "no-capacity"),
            FleetError::Internal(_) => (500, "internal"),
        }
    }

    /// What the problem says: internals are logged, never shown.
    pub fn detail(&self) -> String {
        match self {
            FleetError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }

    /// Members a problem carries besides the standard ones: a quota's name, limit and
    /// use.
    pub fn extensions(&self) -> Option<Value> {
        match self {
            FleetError::QuotaExceeded { quota, limit, used } => {
                Some(json!({"quota": quota, "limit": limit, "used": used}))
            }
            FleetError::ClusterWriteFailed(outcomes) => Some(outcomes.clone()),
            _ => None,
        }
    }

    /// The problem document stored with a failed task or a failed target of a ping.
    pub fn problem(&self) -> Value {
        let (status, kind) = self.status_and_kind();
        let mut problem = json!({
            "type": format!("urn:applianced:problem:{kind}"),
            "title": reason(status),
            "status": status,
            "detail": self.detail(),
        });
        merge(&mut problem, self.extensions());
        problem
    }
}

/// The reason phrase of the status codes above.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Adds `extensions`' members to a problem document.
pub fn merge(problem: &mut Value, extensions: Option<Value>) {
    if let (Value::Object(p), Some(Value::Object(e))) = (problem, extensions) {
        p.extend(e);
    }
}
