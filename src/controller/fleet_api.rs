//! The fleet part of the northbound API (admin zone): appliances, their actions, events
//! and agent pass-through, pings, tasks, and the OpenAPI document.
//!
//! ```text
//! POST   /v1/appliances               {name, ttl_minutes?, external_id?, callback_url?, template?} -> 202 + task
//! GET    /v1/appliances               ?state=&name=&external_id=
//! GET    /v1/appliances/:id
//! DELETE /v1/appliances/:id           -> 202 + task
//! POST   /v1/appliances/:id/actions   {action: start|stop|suspend|resume|destroy|rotate-certificate} -> 202 + task
//!                                     {action: extend, minutes} -> 200
//! GET    /v1/appliances/:id/events    the lifecycle events with their webhook deliveries
//! POST   /v1/appliances/:id/ping      ?async=true -> 202 + task
//! POST   /v1/ping                     {targets?: [id]} (default: every running appliance); ?async=true
//! ANY    /v1/appliances/:id/agent/... the agent's API, as the controller
//! GET    /v1/tasks, /v1/tasks/:id     202 + Retry-After while queued or running, then 200
//! GET    /v1/openapi.json
//! ```
//! Appliances and tasks are visible to their owner and to admins; to anyone else they
//! do not exist (404).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use hyper::Request;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::api::{
    Answer, ApiError, ControllerApp, Route, json, json_or_default, ok, read_body, read_body_limited,
};
use super::auth;
use super::fleet::{Check, FleetError, acting_as, appliance_view};
use super::lifecycle::{self, Event, State};
use super::records::{Appliance, NewTask, Task};
use super::store::{Role, StoreError, User};
use crate::config::controller::Webhooks;

/// Largest body passed through to an agent (its own default limit).
const MAX_AGENT_BODY: u64 = 1024 * 1024;
/// Default time-to-live when the request names none, within the configured range.
const DEFAULT_TTL_MINUTES: u32 = 60;

pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct CreateAppliance {
    name: String,
    #[serde(default)]
    ttl_minutes: Option<u32>,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    template: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action: String,
    #[serde(default)]
    minutes: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Ping {
    #[serde(default)]
    targets: Option<Vec<String>>,
    /// `ping` (the agent's `GET /`, default) or `status` (its `GET /status`).
    #[serde(default)]
    check: Check,
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `?async=true` (or `1`); `false`, `0` or no parameter: synchronous. Anything else,
/// an empty value included, is refused rather than guessed.
fn is_async(req: &Request<Incoming>) -> Result<bool, ApiError> {
    match query_param(req, "async") {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "async {other:?}: true or false"
        ))),
    }
}

/// The header that names the acting user on pass-through requests to an agent.
pub const ACTOR_HEADER: &str = "x-applianced-actor";

/// The headers a pass-through request carries to the agent: the client's content type
/// and accept, and the acting user.
fn pass_through_headers(from: &HeaderMap, actor: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = from.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    // User names are checked to be plain ASCII, so this never fails.
    if let Ok(v) = HeaderValue::from_str(actor) {
        headers.insert(header::HeaderName::from_static(ACTOR_HEADER), v);
    }
    headers
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::Fleet(FleetError::Invalid(msg.into()))
}

fn sees(user: &User, a: &Appliance) -> bool {
    user.role == Role::Admin || a.owner_id == user.id
}

/// 202 with the task, `Location` and `Retry-After`.
fn accepted(task: &Task, extra: Option<Value>) -> Answer {
    let mut body = task_view(task);
    if let Some(extra) = extra {
        body["appliance"] = extra;
    }
    let location = format!("/v1/tasks/{}", task.id);
    Answer {
        status: StatusCode::ACCEPTED,
        body: Bytes::from(body.to_string()),
        content_type: "application/json",
        headers: vec![
            (
                header::LOCATION,
                HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/v1/tasks")),
            ),
            (header::RETRY_AFTER, HeaderValue::from_static("1")),
        ],
    }
}

fn task_view(t: &Task) -> Value {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
    };
    let mut v = json!({
        "id": t.id,
        "kind": t.kind,
        "state": t.state,
        "appliance_id": t.appliance_id,
        "owner_id": t.owner_id,
        "attempts": t.attempts,
        "created_at": crate::certs::format_unix(t.created_at),
        "finished_at": t.finished_at.map(crate::certs::format_unix),
    });
    if let Some(r) = parse(&t.result) {
        v["result"] = r;
    }
    if let Some(p) = parse(&t.problem) {
        v["problem"] = p;
    }
    v
}

fn check_name(check: Check) -> &'static str {
    match check {
        Check::Ping => "ping",
        Check::Status => "status",
    }
}

fn check_appliance_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "name {name:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

fn check_callback_url(url: &str, hooks: &Webhooks) -> Result<(), ApiError> {
    let parsed: Result<http::Uri, _> = url.parse();
    let host = match &parsed {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) => u.host(),
        _ => None,
    };
    match host {
        None => Err(invalid(format!(
            "callback_url {url:?}: an absolute http or https URL"
        ))),
        Some(host) if !hooks.allows(host) => Err(invalid(format!(
            "callback_url {url:?}: host {host} is not in webhooks.allowed_hosts"
        ))),
        Some(_) => Ok(()),
    }
}

pub async fn dispatch(
    app: &ControllerApp,
    route: Route,
    req: Request<Incoming>,
) -> Result<Answer, ApiError> {
    if route == Route::OpenApi {
        return Ok(Answer {
            status: StatusCode::OK,
            body: Bytes::from_static(OPENAPI.as_bytes()),
            content_type: "application/json",
            headers: Vec::new(),
        });
    }
    let now = crate::certs::now_unix();
    let user = app.caller(&req, now).await?;
    // Whatever the request changes is recorded as done by this user.
    acting_as(Some(user.name.clone()), serve(app, route, req, &user, now)).await
}

async fn serve(
    app: &ControllerApp,
    route: Route,
    req: Request<Incoming>,
    user: &User,
    now: i64,
) -> Result<Answer, ApiError> {
    let fleet = &app.fleet;
    let user_ref = user;
    let visible = |id: String| async move {
        match fleet.store.appliance(&id).await? {
            Some(a) if sees(user_ref, &a) => Ok::<_, ApiError>(a),
            _ => Err(ApiError::Fleet(FleetError::NotFound)),
        }
    };
    match route {
        Route::CreateAppliance => {
            let body: CreateAppliance = json(&read_body(req).await?)?;
            create(app, user, body, now).await
        }
        Route::ListAppliances => {
            let state = query_param(&req, "state").map(str::to_string);
            let name = query_param(&req, "name").map(str::to_string);
            let external = query_param(&req, "external_id").map(str::to_string);
            if let Some(s) = &state
                && State::parse(s).is_none()
            {
                return Err(invalid(format!("state {s:?} is not a lifecycle state")));
            }
            // Deleted appliances are listed only when asked for.
            let deleted = state.as_deref() == Some("deleted");
            let list: Vec<Value> = fleet
                .store
                .appliances(deleted)
                .await?
                .iter()
                .filter(|a| sees(user, a))
                .filter(|a| state.as_ref().is_none_or(|s| a.state.as_str() == s))
                .filter(|a| name.as_ref().is_none_or(|n| &a.name == n))
                .filter(|a| {
                    external
                        .as_ref()
                        .is_none_or(|e| a.external_id.as_ref() == Some(e))
                })
                .map(appliance_view)
                .collect();
            Ok(ok(&list).into())
        }
        Route::GetAppliance(id) => Ok(ok(&appliance_view(&visible(id).await?)).into()),
        Route::DeleteAppliance(id) => {
            let a = visible(id).await?;
            queue_action(app, user, &a, Event::Destroy, json!({"action": "destroy"})).await
        }
        Route::ApplianceAction(id) => {
            let a = visible(id).await?;
            let action: Action = json(&read_body(req).await?)?;
            let event = Event::action(&action.action).ok_or_else(|| {
                invalid(format!(
                    "action {:?}: start, stop, suspend, resume, extend, destroy or rotate-certificate",
                    action.action
                ))
            })?;
            if event == Event::Extend {
                return extend(app, &a, action.minutes).await;
            }
            if action.minutes.is_some() {
                return Err(invalid("minutes is only for extend"));
            }
            queue_action(app, user, &a, event, json!({"action": action.action})).await
        }
        Route::ApplianceEvents(id) => {
            let a = visible(id).await?;
            let events: Vec<Value> = fleet
                .store
                .events(&a.id)
                .await?
                .into_iter()
                .map(|(e, deliveries)| {
                    json!({
                        "id": e.id,
                        "event": e.kind,
                        "from_state": e.from_state,
                        "to_state": e.to_state,
                        "detail": e.detail.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
                        "actor": e.actor,
                        "at": crate::certs::format_unix(e.at),
                        "deliveries": deliveries.iter().map(|d| json!({
                            "id": d.id,
                            "url": d.url,
                            "state": d.state,
                            "attempts": d.attempts,
                            "last_status": d.last_status,
                            "last_error": d.last_error,
                            "delivered_at": d.delivered_at.map(crate::certs::format_unix),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Ok(ok(&events).into())
        }
        Route::PingOne(id) => {
            let a = visible(id).await?;
            let check = match query_param(&req, "check") {
                None | Some("ping") => Check::Ping,
                Some("status") => Check::Status,
                Some(other) => {
                    return Err(invalid(format!("check {other:?}: ping or status")));
                }
            };
            if is_async(&req)? {
                let request =
                    json!({"targets": [a.id], "single": true, "check": check_name(check)});
                let task = queue(app, "ping", None, user, request).await?;
                return Ok(accepted(&task, None));
            }
            Ok(ok(&fleet.ping(&a, check).await?).into())
        }
        Route::PingMany => {
            let asynchronous = is_async(&req)?;
            let ping: Ping = json_or_default(&read_body(req).await?)?;
            // One read of the fleet, whether targets are named or not.
            let mine: Vec<Appliance> = fleet
                .store
                .appliances(false)
                .await?
                .into_iter()
                .filter(|a| sees(user, a))
                .collect();
            let targets = match ping.targets {
                Some(targets) => {
                    if targets.is_empty() || targets.len() > 10_000 {
                        return Err(invalid("targets: 1 to 10000 appliance ids"));
                    }
                    let known: std::collections::HashSet<&str> =
                        mine.iter().map(|a| a.id.as_str()).collect();
                    if let Some(id) = targets.iter().find(|id| !known.contains(id.as_str())) {
                        return Err(invalid(format!(
                            "target {id:?} is not an appliance you can see"
                        )));
                    }
                    targets
                }
                None => mine
                    .into_iter()
                    .filter(|a| a.state.is_running())
                    .map(|a| a.id)
                    .collect(),
            };
            if asynchronous {
                let request = json!({"targets": targets, "check": check_name(ping.check)});
                let task = queue(app, "ping", None, user, request).await?;
                return Ok(accepted(&task, None));
            }
            Ok(ok(&fleet.ping_many(&targets, ping.check).await).into())
        }
        Route::Agent(id, path) => {
            let a = visible(id).await?;
            pass_through(app, user, &a, path, req).await
        }
        Route::ListTasks => {
            let owner = (user.role != Role::Admin).then_some(user.id.as_str());
            let tasks = fleet.store.tasks(owner, 500).await?;
            Ok(ok(&tasks.iter().map(task_view).collect::<Vec<_>>()).into())
        }
        Route::GetTask(id) => {
            let task = match fleet.store.task(&id).await? {
                Some(t) if user.role == Role::Admin || t.owner_id == user.id => t,
                _ => return Err(ApiError::NotFound),
            };
            if task.is_done() {
                Ok(ok(&task_view(&task)).into())
            } else {
                Ok(accepted(&task, None))
            }
        }
        _ => Err(ApiError::NotFound),
    }
}

async fn queue(
    app: &ControllerApp,
    kind: &str,
    appliance_id: Option<&str>,
    user: &User,
    request: Value,
) -> Result<Task, ApiError> {
    let id = app
        .fleet
        .queue(kind, appliance_id, &user.id, request)
        .await?;
    queued_task(app, &id).await
}

async fn queued_task(app: &ControllerApp, id: &str) -> Result<Task, ApiError> {
    app.store
        .task(id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("task {id} vanished")))
}

/// Checks the move is allowed now, queues the task (one per appliance at a time), and
/// for `start` and `stop` moves the appliance at once (`booting`, `stopping`).
async fn queue_action(
    app: &ControllerApp,
    user: &User,
    a: &Appliance,
    event: Event,
    request: Value,
) -> Result<Answer, ApiError> {
    if lifecycle::next(a.state, event).is_none() {
        return Err(ApiError::Fleet(FleetError::Conflict(format!(
            "cannot {} appliance {} while it is {}",
            event.name(),
            a.id,
            a.state.as_str()
        ))));
    }
    let task = if matches!(event, Event::Start | Event::Stop) {
        // Moved and queued in one transaction: the task cannot run (and the appliance
        // cannot report `launched` or `stopped`) before the move is recorded.
        let task_id = app
            .fleet
            .apply_and_queue(&a.id, event, event.name(), &user.id, request)
            .await?;
        queued_task(app, &task_id).await?
    } else {
        queue(app, event.name(), Some(&a.id), user, request).await?
    };
    let view = app.fleet.view(&a.id).await?;
    Ok(accepted(&task, Some(view)))
}

/// `extend`: more minutes, capped at the maximum time-to-live since `launched`.
async fn extend(
    app: &ControllerApp,
    a: &Appliance,
    minutes: Option<u32>,
) -> Result<Answer, ApiError> {
    let minutes = minutes
        .filter(|m| *m > 0)
        .ok_or_else(|| invalid("extend needs minutes (at least 1)"))?;
    if lifecycle::next(a.state, Event::Extend).is_none() {
        return Err(ApiError::Fleet(FleetError::Conflict(format!(
            "cannot extend appliance {} while it is {}",
            a.id,
            a.state.as_str()
        ))));
    }
    let (Some(launched), Some(expires)) = (a.launched_at, a.expires_at) else {
        return Err(ApiError::Fleet(FleetError::Conflict(
            "the appliance has not launched yet".into(),
        )));
    };
    let cap = launched + i64::from(app.fleet.ttl_range().1) * 60;
    let wanted = expires + i64::from(minutes) * 60;
    if expires >= cap {
        return Err(ApiError::Fleet(FleetError::Conflict(format!(
            "already at the maximum time-to-live of {} minutes",
            app.fleet.ttl_range().1
        ))));
    }
    let new = wanted.min(cap);
    let updated = app
        .fleet
        .apply(
            &a.id,
            Event::Extend,
            |_| super::records::Changes {
                expires_at: Some(new),
                ..Default::default()
            },
            Some(json!({
                "minutes": minutes,
                "expires_at": crate::certs::format_unix(new),
                "capped": new < wanted,
            })),
        )
        .await?;
    Ok(ok(&appliance_view(&updated)).into())
}

async fn create(
    app: &ControllerApp,
    user: &User,
    mut body: CreateAppliance,
    now: i64,
) -> Result<Answer, ApiError> {
    check_appliance_name(&body.name)?;
    let (min, max) = app.fleet.ttl_range();
    let ttl = body
        .ttl_minutes
        .unwrap_or(DEFAULT_TTL_MINUTES.clamp(min, max));
    if !(min..=max).contains(&ttl) {
        return Err(invalid(format!(
            "ttl_minutes {ttl}: allowed range is {min}..{max}"
        )));
    }
    body.ttl_minutes = Some(ttl);
    if let Some(e) = &body.external_id
        && (e.is_empty() || e.len() > 128 || e.chars().any(char::is_control))
    {
        return Err(invalid("external_id: 1 to 128 printable characters"));
    }
    if let Some(url) = &body.callback_url {
        check_callback_url(url, app.fleet.webhooks())?;
    }
    match body.template.as_deref() {
        None | Some("process") => body.template = Some("process".into()),
        Some(other) => {
            return Err(invalid(format!(
                "template {other:?} is not in the catalogue (process)"
            )));
        }
    }
    let canonical = serde_json::to_string(&body).unwrap_or_default();
    let hash = auth::token_hash(&format!("{}\n{canonical}", user.id));
    let appliance = Appliance {
        id: auth::new_id(),
        name: body.name.clone(),
        owner_id: user.id.clone(),
        external_id: body.external_id.clone(),
        request_hash: hash.clone(),
        state: State::Requested,
        state_since: now,
        ttl_minutes: i64::from(ttl),
        callback_url: body.callback_url.clone(),
        slot: None,
        address: None,
        agent_port: None,
        cert_serial: None,
        cert_not_after: None,
        launched_at: None,
        expires_at: None,
        last_heartbeat_at: None,
        last_status: None,
        created_at: now,
    };
    let mut request: Value = serde_json::from_str(&canonical).unwrap_or_default();
    request["actor"] = Value::String(user.name.clone());
    let new_task = NewTask {
        kind: "create",
        appliance_id: Some(&appliance.id),
        owner_id: &user.id,
        request: request.to_string(),
    };
    match app
        .store
        .create_appliance(&appliance, &new_task, Some(&user.name))
        .await
    {
        Ok(task_id) => {
            app.fleet.task_queued();
            let task = app
                .store
                .task(&task_id)
                .await?
                .ok_or_else(|| ApiError::Internal("the create task vanished".into()))?;
            Ok(accepted(&task, Some(appliance_view(&appliance))))
        }
        Err(StoreError::Conflict(_)) => {
            // The idempotency key: the same request again gets the same task.
            let external = body.external_id.as_deref().unwrap_or_default();
            let existing = app
                .store
                .appliance_by_external_id(external)
                .await?
                .ok_or_else(|| ApiError::Internal("external_id conflict without a row".into()))?;
            if existing.request_hash != hash {
                return Err(ApiError::Fleet(FleetError::Conflict(format!(
                    "external_id {external:?} was used with another request"
                ))));
            }
            let task = app
                .store
                .create_task_of(&existing.id)
                .await?
                .ok_or_else(|| ApiError::Internal("appliance without create task".into()))?;
            Ok(accepted(&task, Some(appliance_view(&existing))))
        }
        Err(e) => Err(e.into()),
    }
}

/// Forwards a request to the appliance's agent and its answer back, as it is.
async fn pass_through(
    app: &ControllerApp,
    user: &User,
    a: &Appliance,
    path: String,
    req: Request<Incoming>,
) -> Result<Answer, ApiError> {
    let method = req.method().clone();
    if !matches!(
        method,
        Method::GET | Method::PUT | Method::POST | Method::DELETE
    ) {
        return Err(ApiError::NotFound);
    }
    // Configurations are code: members read through the pass-through, only admins write.
    if method != Method::GET && user.role != Role::Admin {
        return Err(ApiError::PassThroughReadOnly);
    }
    if !a.state.is_running() {
        return Err(ApiError::Fleet(FleetError::Conflict(format!(
            "appliance {} is {}: its agent is not running",
            a.id,
            a.state.as_str()
        ))));
    }
    let headers = pass_through_headers(req.headers(), &user.name);
    let body = read_body_limited(req, MAX_AGENT_BODY).await?;
    let reply = app
        .fleet
        .call_agent(a, method, &path, headers, body)
        .await?;
    let content_type = match reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) if t.starts_with("application/json") => "application/json",
        Some(t) if t.starts_with("text/html") => "text/html",
        Some(t) if t.starts_with("application/x-pem-file") => "application/x-pem-file",
        _ => "text/plain; charset=utf-8",
    };
    Ok(Answer {
        status: reply.status,
        body: reply.body,
        content_type,
        headers: vec![(
            header::HeaderName::from_static("x-applianced-appliance"),
            HeaderValue::from_str(&a.id).unwrap_or(HeaderValue::from_static("-")),
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the API parses is in the OpenAPI document, and nothing else is.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let to_openapi = |label: &str| {
            label
                .split('/')
                .map(|s| match s {
                    ":id" => "{id}".to_string(),
                    "*" => "{path}".to_string(),
                    s => s.to_string(),
                })
                .collect::<Vec<_>>()
                .join("/")
        };
        let routes = [
            Route::CreateToken,
            Route::ListUsers,
            Route::GetUser(String::new()),
            Route::ListAppliances,
            Route::GetAppliance(String::new()),
            Route::ApplianceAction(String::new()),
            Route::ApplianceEvents(String::new()),
            Route::PingOne(String::new()),
            Route::PingMany,
            Route::Agent(String::new(), String::new()),
            Route::ListTasks,
            Route::GetTask(String::new()),
            Route::OpenApi,
            Route::Callback,
        ];
        let mut documented: Vec<String> = paths.keys().cloned().collect();
        documented.sort();
        let mut served: Vec<String> = routes.iter().map(|r| to_openapi(r.label())).collect();
        served.sort();
        served.dedup();
        assert_eq!(served, documented);
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
            }
        }
        // Methods as parsed.
        let m = |method: Method, path: &str| super::super::api::parse(&method, path);
        assert!(paths["/v1/appliances/{id}/actions"].get("post").is_some());
        assert!(m(Method::POST, "/v1/appliances/x/actions").is_some());
        assert!(paths["/v1/appliances/{id}"].get("delete").is_some());
        assert!(m(Method::DELETE, "/v1/appliances/x").is_some());
    }

    #[test]
    fn pass_through_requests_name_the_acting_user() {
        let mut from = HeaderMap::new();
        from.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        from.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        from.insert(ACTOR_HEADER, HeaderValue::from_static("someone-else"));
        let sent = pass_through_headers(&from, "alice");
        assert_eq!(sent[ACTOR_HEADER], "alice", "not the client's own claim");
        assert_eq!(sent[header::ACCEPT], "application/json");
        assert!(
            sent.get(header::AUTHORIZATION).is_none(),
            "the token stays here"
        );
        assert_eq!(sent.len(), 2);
    }

    #[test]
    fn agent_pass_through_keeps_the_path_and_query() {
        use super::super::api::parse;
        assert_eq!(
            parse(&Method::PUT, "/v1/appliances/abc/agent/instances/i/haproxy"),
            Some(Route::Agent("abc".into(), "/instances/i/haproxy".into()))
        );
        assert_eq!(
            parse(&Method::GET, "/v1/appliances/abc/agent?x=1"),
            Some(Route::Agent("abc".into(), "/?x=1".into()))
        );
        assert_eq!(
            parse(&Method::GET, "/v1/appliances/abc/agentx"),
            None,
            "not the pass-through"
        );
        assert_eq!(
            parse(&Method::POST, "/v1/appliances/abc/ping?async=true"),
            Some(Route::PingOne("abc".into()))
        );
    }
}
