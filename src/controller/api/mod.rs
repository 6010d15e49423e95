//! The northbound API on axum, over the HTTP-free [`Fleet`](super::fleet::Fleet).
//!
//! One module per resource holds its routes, request types and handlers; handlers parse
//! (with the [`extract`] extractors: the caller, strict bodies within the size limit),
//! call the fleet, and render typed [`views`]. Errors are one type ([`ApiError`]) with
//! one exhaustive mapping to status and problem `type`. The OpenAPI document is
//! generated from the same handlers and types (utoipa) and served at
//! `/v1/openapi.json`; admin listeners serve its documentation page (Swagger UI, its
//! assets built in) at `/`.
//!
//! The routers are served through the shared transport ([`crate::transport`]): TLS,
//! limits and shutdown are the agent's; the connection's identity comes as a request
//! extension.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod accounts;
pub mod agent;
pub mod appliances;
pub mod callbacks;
pub mod catalogue;
pub mod clusters;
pub mod enrolments;
pub mod error;
pub mod extract;
pub mod keypairs;
pub mod pings;
pub mod tasks;
pub mod teams;
pub mod tokens;
pub mod usage;
pub mod users;
pub mod views;

pub use error::ApiError;
use extract::{AccountCertificate, ActorSlot, CertificateName};

use super::fleet::Fleet;
use crate::config::controller::Zone;
use crate::transport::{App, ConnInfo};

/// Largest request body the API reads (the pass-through: [`agent::MAX_AGENT_BODY`]).
pub const MAX_BODY: usize = 64 * 1024;
/// Time a client has to send a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler reaches.
#[derive(Clone)]
pub struct ApiState {
    pub fleet: Arc<Fleet>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "applianced controller",
        description = "The northbound API of the applianced controller: operators' tokens and users, \
            teams with their members and quotas, service accounts, key pairs, usage and invoices, clusters, appliances and their lifecycle, pings, tasks, and the pass-through to each appliance's agent. \
            Errors are RFC 9457 problem documents with a stable `type`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(agent::get_doc, agent::put_doc, agent::post_doc, agent::delete_doc, clusters::put_doc, clusters::post_doc, clusters::delete_doc),
    components(schemas(views::Problem)),
    modifiers(&Conventions),
    security(("bearer" = []), ("client_certificate" = [])),
)]
struct ApiDoc;

/// What every operation shares: the security schemes, the problem documents any
/// request may get (malformed, unauthenticated, too large, too slow), and problem
/// answers named as `application/problem+json`.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            Ref, RefOr, ResponseBuilder, content::ContentBuilder, schema::Schema,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "client_certificate",
            SecurityScheme::MutualTls {
                description: Some(
                    "a client certificate naming a user (admin listeners with a client CA)".into(),
                ),
                extensions: None,
            },
        );
        components.add_security_scheme(
            "appliance_certificate",
            SecurityScheme::MutualTls {
                description: Some("the appliance's own certificate (appliance listeners)".into()),
                extensions: None,
            },
        );
        let problem = || {
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(Ref::from_schema_name("Problem"))))
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = path == "/v1/openapi.json";
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let mut common = vec![
                    (
                        "400",
                        "Malformed request (not a JSON object, unknown field, wrong type, bad query value)",
                    ),
                    ("408", "The body did not arrive in time"),
                    ("413", "The body is too large"),
                ];
                if !public {
                    common.push(("401", "No valid credentials"));
                }
                for (code, description) in common {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| {
                            RefOr::T(ResponseBuilder::new().description(description).build())
                        });
                }
                // Every error answer is a problem document; through the pass-through,
                // the agent's own errors come as it sent them.
                let agent = path.contains("/agent/");
                for (code, response) in op.responses.responses.iter_mut() {
                    let is_error = code.starts_with('4') || code.starts_with('5');
                    if let (true, RefOr::T(r)) = (is_error, response) {
                        r.content.clear();
                        r.content
                            .insert("application/problem+json".into(), problem());
                        if agent {
                            for t in ["text/plain", "application/json"] {
                                r.content.insert(t.into(), ContentBuilder::new().build());
                            }
                        }
                    }
                }
                // An optional body is absent, not `null`.
                if let Some(body) = op.request_body.as_mut()
                    && body.required != Some(utoipa::openapi::Required::True)
                {
                    for content in body.content.values_mut() {
                        if let Some(Schema::OneOf(one_of)) = match &content.schema {
                            Some(RefOr::T(s)) => Some(s),
                            _ => None,
                        } && let Some(inner) = one_of.items.iter().find(|i| {
                            !matches!(i, RefOr::T(Schema::Object(o))
                                if o.schema_type == utoipa::openapi::schema::SchemaType::Type(utoipa::openapi::Type::Null))
                        }) {
                            content.schema = Some(inner.clone());
                        }
                    }
                    body.required = Some(utoipa::openapi::Required::False);
                }
            }
        }
    }
}

/// The admin zone's API routes and the OpenAPI document describing them.
fn admin_api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tokens::create, tokens::delete))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(teams::list, teams::create))
        .routes(routes!(teams::get, teams::update, teams::delete))
        .routes(routes!(teams::set_member, teams::remove_member))
        .routes(routes!(teams::get_quotas, teams::set_quotas))
        .routes(routes!(accounts::list, accounts::create))
        .routes(routes!(accounts::get, accounts::delete))
        .routes(routes!(keypairs::list, keypairs::create))
        .routes(routes!(keypairs::get, keypairs::delete))
        .routes(routes!(clusters::list, clusters::create))
        .routes(routes!(clusters::get, clusters::delete))
        .routes(routes!(enrolments::list_tokens, enrolments::create_token))
        .routes(routes!(enrolments::delete_token))
        .routes(routes!(enrolments::list))
        .routes(routes!(enrolments::accept))
        .routes(routes!(enrolments::reject))
        .routes(routes!(appliances::list, appliances::create))
        .routes(routes!(appliances::get, appliances::delete))
        .routes(routes!(appliances::act))
        .routes(routes!(appliances::events))
        .routes(routes!(pings::one))
        .routes(routes!(pings::many))
        .routes(routes!(tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::cancel))
        .routes(routes!(catalogue::list_images))
        .routes(routes!(catalogue::get_image))
        .routes(routes!(catalogue::list_flavors))
        .routes(routes!(catalogue::get_flavor))
        .routes(routes!(catalogue::list_networks))
        .routes(routes!(catalogue::get_network))
        .routes(routes!(catalogue::list_backends))
        .routes(routes!(catalogue::list_regions))
        .routes(routes!(catalogue::get_region))
        .routes(routes!(catalogue::list_templates))
        .routes(routes!(catalogue::get_template))
        .routes(routes!(usage::usage))
        .routes(routes!(usage::list_invoices))
        .routes(routes!(usage::get_invoice))
        .routes(routes!(openapi_json))
        .split_for_parts();
    // The appliance zone's routes are part of the same contract.
    let (_, callbacks) = OpenApiRouter::<ApiState>::new()
        .routes(routes!(callbacks::report))
        .routes(routes!(enrolments::submit))
        .routes(routes!(enrolments::poll))
        .split_for_parts();
    doc.merge(callbacks);
    Conventions.modify(&mut doc);
    // The pass-through keeps the agent's path whole: a wildcard (documented above as
    // `{path}`, which axum would read as one segment).
    let forward = || {
        axum::routing::get(agent::forward)
            .put(agent::forward)
            .post(agent::forward)
            .delete(agent::forward)
    };
    let cluster_write = || {
        axum::routing::put(clusters::write)
            .post(clusters::write)
            .delete(clusters::write)
    };
    let router = router
        .route("/v1/clusters/{id}/agent", cluster_write())
        .route("/v1/clusters/{id}/agent/", cluster_write())
        .route("/v1/clusters/{id}/agent/{*path}", cluster_write())
        .route("/v1/appliances/{id}/agent", forward())
        .route("/v1/appliances/{id}/agent/", forward())
        .route("/v1/appliances/{id}/agent/{*path}", forward());
    (router, doc)
}

/// The OpenAPI document, generated once.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| admin_api().1)
}

fn openapi_bytes() -> &'static Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| Bytes::from(openapi().to_json().unwrap_or_default()))
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(operation_id = "openapi", get, path = "/v1/openapi.json", tag = "documentation", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    let mut r = openapi_bytes().clone().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn swagger_config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| Arc::new(utoipa_swagger_ui::Config::new(["/v1/openapi.json"])))
        .clone()
}

/// The documentation page (`/`) and its assets (`/swagger-ui.css`, ...), built in.
async fn documentation(path: Option<axum::extract::Path<String>>) -> Result<Response, ApiError> {
    let file = path.map(|p| p.0).unwrap_or_default();
    match utoipa_swagger_ui::serve(&file, swagger_config()) {
        Ok(Some(f)) => {
            let mut r = (StatusCode::OK, f.bytes.into_owned()).into_response();
            if let Ok(v) = HeaderValue::from_str(&f.content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            Ok(r)
        }
        Ok(None) | Err(_) => Err(ApiError::NoRoute),
    }
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}

/// The router of a listener's zone.
pub fn router(zone: Zone, fleet: Arc<Fleet>) -> Router {
    let state = ApiState { fleet };
    let routes: Router<ApiState> = match zone {
        Zone::Admin => admin_api()
            .0
            .route("/", axum::routing::get(documentation))
            .route("/{file}", axum::routing::get(documentation)),
        // Appliances' callbacks (with their certificates), and enrolment (without one
        // yet: the token is the credential).
        Zone::Appliance => Router::new()
            .route("/v1/events", axum::routing::post(callbacks::report))
            .route(
                "/v1/enrolment-requests",
                axum::routing::post(enrolments::submit),
            )
            .route(
                "/v1/enrolment-requests/{id}",
                axum::routing::get(enrolments::poll),
            ),
        // Integrations: the same API, for service accounts (their client certificates)
        // only: a request that came without one is marked as such.
        Zone::Api => admin_api()
            .0
            .route("/", axum::routing::get(documentation))
            .route("/{file}", axum::routing::get(documentation))
            .layer(middleware::map_request(|mut req: Request| async move {
                if req.extensions().get::<AccountCertificate>().is_none() {
                    req.extensions_mut().insert(AccountCertificate(None));
                }
                req
            })),
    };
    routes
        .fallback(no_route)
        .layer(middleware::from_fn(request_line))
        .with_state(state)
}

/// Writes each request's line (with its actor) and turns errors into problem documents
/// naming the request's path.
async fn request_line(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let actor = ActorSlot::default();
    req.extensions_mut().insert(actor.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let conn = req.extensions().get::<Arc<ConnInfo>>().cloned();
    let mut response = next.run(req).await;
    if let Some(failed) = response.extensions_mut().remove::<error::Failed>() {
        if let Some(cause) = failed.0.internal() {
            tracing::error!(%method, %path, error = %cause, "internal error");
        }
        response = error::problem(&failed.0, &path);
    } else if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        // The router's own answer for a routed path: a problem too, with its `Allow`.
        let allow = response.headers().get(header::ALLOW).cloned();
        response = error::problem(&ApiError::MethodNotAllowed, &path);
        if let Some(allow) = allow {
            response.headers_mut().insert(header::ALLOW, allow);
        }
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let identity = conn.as_ref().and_then(|c| c.identity.as_ref());
    tracing::info!(
        peer = %conn.as_ref().map(|c| c.peer.to_string()).unwrap_or_else(|| "-".into()),
        client = %identity.map(|i| i.name()).unwrap_or("-"),
        actor = %actor.0.get().map(String::as_str).unwrap_or("-"),
        method = %method,
        path = %path,
        route = %route.as_deref().unwrap_or("(unknown)"),
        status = response.status().as_u16(),
        duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    response
}

/// One listener of the controller: its zone's router behind the shared transport.
pub struct ControllerApp {
    router: Router,
    zone: Zone,
}

impl ControllerApp {
    pub fn new(zone: Zone, fleet: Arc<Fleet>) -> ControllerApp {
        ControllerApp {
            router: router(zone, fleet),
            zone,
        }
    }
}

/// A path without its trailing slashes (`/v1/users/` is `/v1/users`), except the root
/// and the pass-through, which keeps the agent's path as it came.
fn normalise(uri: &http::Uri) -> Option<http::Uri> {
    let path = uri.path();
    if path == "/" || !path.ends_with('/') || path.contains("/agent/") {
        return None;
    }
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let pq = match uri.query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_string(),
    };
    pq.parse().ok()
}

/// One request through a zone's router, its path normalised first.
pub async fn serve(router: &Router, mut req: Request) -> Response {
    if let Some(uri) = normalise(req.uri()) {
        *req.uri_mut() = uri;
    }
    match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

impl App for ControllerApp {
    async fn handle(
        self: Arc<Self>,
        req: http::Request<crate::transport::body::RequestBody>,
        conn: Arc<ConnInfo>,
    ) -> http::Response<Full<Bytes>> {
        let mut req = req.map(axum::body::Body::new);
        let cn = conn.identity.as_ref().and_then(|i| i.cn.clone());
        match self.zone {
            Zone::Admin => {
                if let Some(cn) = cn {
                    req.extensions_mut().insert(CertificateName(cn));
                }
            }
            Zone::Api => {
                req.extensions_mut().insert(AccountCertificate(cn));
            }
            Zone::Appliance => {}
        }
        req.extensions_mut().insert(conn);
        let (parts, body) = serve(&self.router, req).await.into_parts();
        // Answers are built in memory already (the pass-through's within the client's
        // limit), so collecting them costs no more than they did.
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        http::Response::from_parts(parts, Full::new(bytes))
    }
}
#[cfg(test)]
mod tests;
