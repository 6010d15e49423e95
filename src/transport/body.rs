//! Reading a request body within a size and a time limit, for every role: refused
//! before reading when the declared length is already too large, never held beyond
//! `max` bytes, and a client that trickles its body is cut off at `timeout`.

use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("request body not received in time")]
    Timeout,
    #[error("cannot read the request body: {0}")]
    Read(String),
}

pub async fn read_limited(
    req: Request<Incoming>,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge(max));
    }
    let body = Limited::new(req.into_body(), usize::try_from(max).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge(max))
        }
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}
