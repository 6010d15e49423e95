//! The fleet's HTTPS client ([`AgentClient`]) on the shared transport's client.

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use super::fleet::ports::{AgentClient, BoxFuture, CallError, Incoming, Outgoing, Verb};
use crate::transport::client::{Client, ClientError};

impl AgentClient for Client {
    fn call(&self, request: Outgoing) -> BoxFuture<'_, Result<Incoming, CallError>> {
        Box::pin(async move {
            let method = match request.verb {
                Verb::Get => Method::GET,
                Verb::Put => Method::PUT,
                Verb::Post => Method::POST,
                Verb::Delete => Method::DELETE,
            };
            let mut headers = HeaderMap::new();
            for (name, value) in &request.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(n, v);
                }
            }
            match self
                .send_to(
                    method,
                    &request.url,
                    headers,
                    request.body,
                    request.peer.as_deref(),
                )
                .await
            {
                Ok(reply) => Ok(Incoming {
                    status: reply.status.as_u16(),
                    content_type: reply
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from),
                    body: reply.body,
                }),
                Err(e @ (ClientError::Connect(..) | ClientError::Tls(..))) => {
                    Err(CallError::NotSent(e.to_string()))
                }
                Err(e @ (ClientError::Http(..) | ClientError::Timeout(..))) => {
                    Err(CallError::Broken(e.to_string()))
                }
                Err(
                    e @ (ClientError::Url(_) | ClientError::NoTls | ClientError::WrongPeer(..)),
                ) => Err(CallError::Refused(e.to_string())),
            }
        })
    }
}
