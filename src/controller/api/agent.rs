//! `/v1/appliances/:id/agent/...`: the appliance's agent API, as the controller, with
//! the acting user named to the agent; writes for admins only.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, header};

use super::extract::{Caller, read_body};
use super::{ApiError, ApiState};
use crate::controller::fleet::ids::ApplianceId;
use crate::controller::fleet::operations::{AgentMethod, AgentRequest};

/// Largest body passed through to an agent (its own default limit).
pub const MAX_AGENT_BODY: usize = 1024 * 1024;

/// The id (after `prefix`) and the agent's path (with the query) of a pass-through URI.
fn split(prefix: &str, path_and_query: &str) -> Option<(String, String)> {
    let rest = path_and_query.strip_prefix(prefix)?;
    let (id, agent_path) = rest.split_once("/agent")?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let agent_path = match agent_path {
        p if p.starts_with('/') => p.to_string(),
        p if p.is_empty() || p.starts_with('?') => format!("/{p}"),
        _ => return None,
    };
    Some((id.to_string(), agent_path))
}

fn text(headers: &http::HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The request for an agent a pass-through request carries (of an appliance, or of a
/// cluster's members), and the id after `prefix` in its path.
pub async fn agent_request(req: Request, prefix: &str) -> Result<(String, AgentRequest), ApiError> {
    let method = match *req.method() {
        Method::GET => AgentMethod::Get,
        Method::PUT => AgentMethod::Put,
        Method::POST => AgentMethod::Post,
        Method::DELETE => AgentMethod::Delete,
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let (id, path) = split(prefix, &target).ok_or(ApiError::NoRoute)?;
    let (content_type, accept) = (
        text(req.headers(), header::CONTENT_TYPE),
        text(req.headers(), header::ACCEPT),
    );
    let body = read_body(req, MAX_AGENT_BODY).await?;
    let request = AgentRequest {
        method,
        path,
        content_type,
        accept,
        body,
    };
    Ok((id, request))
}

/// Every method of the pass-through.
pub async fn forward(
    State(s): State<ApiState>,
    Caller(me): Caller,
    req: Request,
) -> Result<Response, ApiError> {
    let (id, request) = agent_request(req, "/v1/appliances/").await?;
    let (a, answer) = s
        .fleet
        .pass_through(&me, &ApplianceId::from(id), request)
        .await?;
    let content_type = match answer.content_type.as_deref() {
        Some(t) if t.starts_with("application/json") => "application/json",
        Some(t) if t.starts_with("text/html") => "text/html",
        Some(t) if t.starts_with("application/x-pem-file") => "application/x-pem-file",
        _ => "text/plain; charset=utf-8",
    };
    let status = http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let mut r = (status, answer.body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::HeaderName::from_static("x-applianced-appliance"),
        HeaderValue::from_str(&a.id).unwrap_or(HeaderValue::from_static("-")),
    );
    Ok(r)
}

// The OpenAPI operations of the pass-through (served by `forward`, routed in `mod.rs`
// with the path as a wildcard): one per method, the same but for a body and who may.

macro_rules! pass_through_doc {
    ($name:ident, $op:literal, $method:ident, $doc:literal,
     [$($body:tt)*], [$($admin_only:tt)*]) => {
        #[doc = $doc]
        #[utoipa::path(operation_id = $op, $method, path = "/v1/appliances/{id}/agent/{path}", tag = "agent",
            params(("id" = String, Path), ("path" = String, Path, description = "the agent's path")),
            $($body)*
            responses(
                $($admin_only)*
                (status = 404, description = "No such appliance"),
                (status = 409, description = "Its agent is not running"),
                (status = 502, description = "The agent does not answer"),
                (status = "default", description = "The agent's answer, as it came",
                    content((String = "text/plain"), (Object = "application/json"), (String = "text/html"),
                        (String = "application/x-pem-file"))),
            ))]
        pub async fn $name() {}
    };
}

pass_through_doc!(
    get_doc,
    "agent_get",
    get,
    "Read from the appliance's agent API.",
    [],
    []
);
pass_through_doc!(
    put_doc,
    "agent_put",
    put,
    "Write to the appliance's agent API (admins).",
    [request_body(content = String, content_type = "text/plain"),],
    [(status = 403, description = "Writes need the admin role"),]
);
pass_through_doc!(
    post_doc,
    "agent_post",
    post,
    "Post to the appliance's agent API (admins).",
    [request_body(content = String, content_type = "text/plain"),],
    [(status = 403, description = "Writes need the admin role"),]
);
pass_through_doc!(
    delete_doc,
    "agent_delete",
    delete,
    "Delete through the appliance's agent API (admins).",
    [],
    [(status = 403, description = "Writes need the admin role"),]
);

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn the_agent_path_and_query_are_kept() {
        assert_eq!(
            split(
                "/v1/appliances/",
                "/v1/appliances/abc/agent/instances/i/haproxy"
            ),
            Some(("abc".into(), "/instances/i/haproxy".into()))
        );
        assert_eq!(
            split("/v1/appliances/", "/v1/appliances/abc/agent?x=1"),
            Some(("abc".into(), "/?x=1".into()))
        );
        assert_eq!(split("/v1/appliances/", "/v1/appliances/abc/agentx"), None);
        assert_eq!(split("/v1/appliances/", "/v1/appliances//agent/x"), None);
        assert_eq!(
            split("/v1/clusters/", "/v1/clusters/c/agent/x"),
            Some(("c".into(), "/x".into()))
        );
    }
}
