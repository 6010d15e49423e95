//! Responses are built here and only here, from a domain result or a domain error.
//!
//! Bodies are `text/plain`: a first line (`OK`, `Not found`, ...) then any command
//! output. A client sending `Accept: application/json` gets `{"code", "message",
//! "details"}` instead. The status of each error is one exhaustive match.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use hyper::Response;

use super::instances::InstanceError;
use crate::certs::CertError;

/// A successful result.
#[derive(Debug)]
pub enum Reply {
    /// `OK` (or another first line) then details.
    Text {
        status: StatusCode,
        message: String,
        details: String,
    },
    /// A JSON document, already serialised.
    Json(Bytes),
    /// File content or another fixed format.
    Raw {
        content_type: &'static str,
        body: Bytes,
    },
}

impl Reply {
    pub fn ok(details: impl Into<String>) -> Reply {
        Reply::Text {
            status: StatusCode::OK,
            message: "OK".into(),
            details: details.into(),
        }
    }

    pub fn created(details: impl Into<String>) -> Reply {
        Reply::Text {
            status: StatusCode::CREATED,
            message: "OK".into(),
            details: details.into(),
        }
    }

    pub fn json(value: &impl serde::Serialize) -> Reply {
        Reply::Json(Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
    }
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Invalid request")]
    UnknownRoute,
    #[error("Invalid instance id: {0:?}")]
    BadInstanceId(String),
    #[error("Invalid file name: {0:?}")]
    BadFileName(String),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("Not found")]
    NotFound,
    #[error("{message}")]
    Refused {
        code: &'static str,
        message: String,
        details: String,
    },
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("Request body larger than the limit of {0} bytes")]
    PayloadTooLarge(u64),
    #[error("Request body not received in time")]
    BodyTimeout,
    /// The disk is full (or over quota): nothing was changed. Details go to the log.
    #[error("Insufficient storage; nothing was changed")]
    InsufficientStorage(String),
    /// Out of file descriptors: nothing was changed; try again. Details go to the log.
    #[error("Out of resources (file descriptors); nothing was changed, try again")]
    OutOfDescriptors(String),
    /// Details go to the log, never to the client.
    #[error("Internal error")]
    Internal(String),
}

impl AgentError {
    pub fn status(&self) -> StatusCode {
        match self {
            AgentError::UnknownRoute => StatusCode::FORBIDDEN,
            AgentError::BadInstanceId(_)
            | AgentError::BadFileName(_)
            | AgentError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AgentError::NotFound => StatusCode::NOT_FOUND,
            AgentError::Refused { .. } | AgentError::Certificate(_) => StatusCode::CONFLICT,
            AgentError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AgentError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            AgentError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            AgentError::OutOfDescriptors(_) => StatusCode::SERVICE_UNAVAILABLE,
            AgentError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AgentError::UnknownRoute => "invalid_request",
            AgentError::BadInstanceId(_) => "bad_instance_id",
            AgentError::BadFileName(_) => "bad_filename",
            AgentError::BadRequest { code, .. } | AgentError::Refused { code, .. } => code,
            AgentError::NotFound => "not_found",
            AgentError::Certificate(e) => e.code(),
            AgentError::PayloadTooLarge(_) => "payload_too_large",
            AgentError::BodyTimeout => "body_timeout",
            AgentError::InsufficientStorage(_) => "insufficient_storage",
            AgentError::OutOfDescriptors(_) => "out_of_descriptors",
            AgentError::Internal(_) => "internal_error",
        }
    }

    fn details(&self) -> &str {
        match self {
            AgentError::Refused { details, .. } => details,
            _ => "",
        }
    }
}

impl From<InstanceError> for AgentError {
    fn from(e: InstanceError) -> Self {
        let refused = |code, e: &InstanceError, details: String| AgentError::Refused {
            code,
            message: e.to_string(),
            details,
        };
        match e {
            InstanceError::NotFound => AgentError::NotFound,
            InstanceError::InvalidConfig { ref output } => {
                refused("invalid_config", &e, output.clone())
            }
            InstanceError::ForbiddenDirective(ref violations) => refused(
                "forbidden_directive",
                &e,
                violations
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            InstanceError::ApplyFailed { ref output } => {
                refused("apply_failed", &e, output.clone())
            }
            InstanceError::CertificateInUse { ref output } => {
                refused("certificate_in_use", &e, output.clone())
            }
            InstanceError::InvalidCustom503(_) => refused("invalid_custom503", &e, String::new()),
            InstanceError::TooLarge(n) => AgentError::PayloadTooLarge(n as u64),
            InstanceError::Certificate(c) => AgentError::Certificate(c),
            InstanceError::Io(io) => AgentError::from(io),
        }
    }
}

impl From<std::io::Error> for AgentError {
    /// A full disk and exhausted descriptors are conditions of the machine the client is
    /// told about (writes fail before any rename, so nothing changed); anything else is
    /// internal.
    fn from(e: std::io::Error) -> Self {
        use nix::errno::Errno;
        match e.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOSPC | Errno::EDQUOT) => AgentError::InsufficientStorage(e.to_string()),
            Some(Errno::EMFILE | Errno::ENFILE) => AgentError::OutOfDescriptors(e.to_string()),
            _ => AgentError::Internal(e.to_string()),
        }
    }
}

/// Builds the HTTP response; returns it with the stable code for the log.
pub fn build(
    result: Result<Reply, AgentError>,
    wants_json: bool,
) -> (Response<Full<Bytes>>, &'static str) {
    match result {
        Ok(Reply::Text {
            status,
            message,
            details,
        }) => (
            message_response(status, "ok", &message, &details, wants_json),
            "ok",
        ),
        Ok(Reply::Json(body)) => (with_body(StatusCode::OK, "application/json", body), "ok"),
        Ok(Reply::Raw { content_type, body }) => {
            (with_body(StatusCode::OK, content_type, body), "ok")
        }
        Err(e) => {
            let code = e.code();
            (
                message_response(e.status(), code, &e.to_string(), e.details(), wants_json),
                code,
            )
        }
    }
}

fn message_response(
    status: StatusCode,
    code: &str,
    message: &str,
    details: &str,
    json: bool,
) -> Response<Full<Bytes>> {
    if json {
        let body = serde_json::json!({ "code": code, "message": message, "details": details });
        return with_body(status, "application/json", Bytes::from(body.to_string()));
    }
    let mut text = String::with_capacity(message.len() + details.len() + 2);
    text.push_str(message);
    text.push('\n');
    if !details.is_empty() {
        text.push_str(details);
        if !details.ends_with('\n') {
            text.push('\n');
        }
    }
    with_body(status, "text/plain; charset=utf-8", Bytes::from(text))
}

fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn text_and_json_errors() {
        let (r, code) = build(Err(AgentError::Certificate(CertError::KeyMismatch)), false);
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(code, "cert_key_mismatch");
        assert_eq!(body(r).await, "Certificate and key do not match\n");

        let (r, _) = build(Err(AgentError::NotFound), true);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v["code"], "not_found");
        assert_eq!(v["message"], "Not found");

        let (r, _) = build(
            Err(AgentError::Internal("disk on fire at /secret".into())),
            false,
        );
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body(r).await.contains("secret"));

        let full = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
        let (r, code) = build(Err(AgentError::from(InstanceError::Io(full))), true);
        assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(code, "insufficient_storage");
        let out = std::io::Error::from_raw_os_error(nix::libc::EMFILE);
        let (r, code) = build(Err(AgentError::from(out)), true);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code, "out_of_descriptors");

        let (r, _) = build(Ok(Reply::created("haproxy reloaded")), false);
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(body(r).await, "OK\nhaproxy reloaded\n");
    }
}
