//! The catalogue, read-only for every signed-in user: `/v1/images`, `/v1/flavors`,
//! `/v1/networks` (each entry shown by id or by name), `/v1/regions`, `/v1/templates`,
//! and `/v1/backends` with what each can do.

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{Caller, Id};
use super::views::ok;
use super::{ApiError, ApiState};
use crate::controller::fleet::catalogue::{Kind, Template};
use crate::controller::fleet::ports::{Capabilities, CatalogueEntry, Region};

/// An image, a flavor or a network.
#[derive(Serialize, ToSchema)]
pub struct CatalogueEntryView {
    pub id: String,
    pub name: String,
    pub description: String,
}

impl From<CatalogueEntry> for CatalogueEntryView {
    fn from(e: CatalogueEntry) -> Self {
        CatalogueEntryView {
            id: e.id,
            name: e.name,
            description: e.description,
        }
    }
}

/// Where appliances are placed: lower `priority` first, at most `capacity` appliances.
#[derive(Serialize, ToSchema)]
pub struct RegionView {
    pub name: String,
    pub priority: u32,
    pub capacity: u32,
    /// The backend that serves it.
    pub backend: String,
}

impl From<(String, Region)> for RegionView {
    fn from((backend, r): (String, Region)) -> Self {
        RegionView {
            name: r.name,
            priority: r.priority,
            capacity: r.capacity,
            backend,
        }
    }
}

/// An image, a flavor and a network of one backend (ids), and optionally a region
/// (without one, placement chooses).
#[derive(Serialize, ToSchema)]
pub struct TemplateView {
    pub name: String,
    pub backend: String,
    pub image: String,
    pub flavor: String,
    pub network: String,
    pub region: Option<String>,
}

impl From<Template> for TemplateView {
    fn from(t: Template) -> Self {
        TemplateView {
            name: t.name,
            backend: t.backend,
            image: t.image,
            flavor: t.flavor,
            network: t.network,
            region: t.region,
        }
    }
}

fn entries(s: &ApiState, me: &crate::controller::fleet::teams::Principal, kind: Kind) -> Response {
    let list = s.fleet.catalogue_list(me, kind);
    ok(list
        .into_iter()
        .map(CatalogueEntryView::from)
        .collect::<Vec<_>>())
}

fn entry(
    s: &ApiState,
    me: &crate::controller::fleet::teams::Principal,
    kind: Kind,
    id_or_name: &str,
) -> Result<Response, ApiError> {
    let e = s.fleet.catalogue_entry(me, kind, id_or_name)?;
    Ok(ok(CatalogueEntryView::from(e)))
}

/// One list of the catalogue and one entry of it, by id or by name.
macro_rules! catalogue_kind {
    ($list:ident, $get:ident, $kind:expr, $path:literal, $one:literal, $listed:literal, $missing:literal) => {
        #[doc = $listed]
        #[utoipa::path(get, path = $path, tag = "catalogue",
            responses((status = 200, description = $listed, body = Vec<CatalogueEntryView>)))]
        pub async fn $list(
            State(s): State<ApiState>,
            Caller(me): Caller,
        ) -> Result<Response, ApiError> {
            Ok(entries(&s, &me, $kind))
        }

        #[doc = "One entry, by id or by name."]
        #[utoipa::path(get, path = $one, tag = "catalogue",
            params(("id" = String, Path, description = "an id or a name")),
            responses(
                (status = 200, description = "The entry", body = CatalogueEntryView),
                (status = 404, description = $missing),
            ))]
        pub async fn $get(
            State(s): State<ApiState>,
            Caller(me): Caller,
            Id(id): Id<String>,
        ) -> Result<Response, ApiError> {
            entry(&s, &me, $kind, &id)
        }
    };
}

catalogue_kind!(
    list_images,
    get_image,
    Kind::Image,
    "/v1/images",
    "/v1/images/{id}",
    "The images appliances are made from",
    "No such image"
);
catalogue_kind!(
    list_flavors,
    get_flavor,
    Kind::Flavor,
    "/v1/flavors",
    "/v1/flavors/{id}",
    "The flavors (resources) appliances are given",
    "No such flavor"
);
catalogue_kind!(
    list_networks,
    get_network,
    Kind::Network,
    "/v1/networks",
    "/v1/networks/{id}",
    "The networks appliances are addressed on",
    "No such network"
);

/// What a backend can do to its appliances: an action it cannot do is 409
/// `not-supported-by-backend`.
#[derive(Serialize, ToSchema)]
pub struct CapabilitiesView {
    /// Creates appliances (otherwise they join by enrolment).
    pub create: bool,
    /// Stops and starts them.
    pub power: bool,
    /// Suspends and resumes them.
    pub suspend: bool,
    /// Serves more than one region of its own.
    pub regions: bool,
    /// Its machines join by enrolment (a one-time token in what their first boot runs).
    pub enrols: bool,
}

/// A compute backend.
#[derive(Serialize, ToSchema)]
pub struct BackendView {
    /// Its name (regions, templates and creates name it).
    pub name: String,
    /// `process`, `netns`, `ec2` or `enrolled`.
    pub kind: String,
    pub capabilities: CapabilitiesView,
}

/// The backends, the default first.
#[utoipa::path(get, path = "/v1/backends", tag = "catalogue",
    responses((status = 200, description = "The backends and what each can do", body = Vec<BackendView>)))]
pub async fn list_backends(
    State(s): State<ApiState>,
    Caller(me): Caller,
) -> Result<Response, ApiError> {
    let view = |(name, kind, c): (String, &'static str, Capabilities)| BackendView {
        name,
        kind: kind.to_string(),
        capabilities: CapabilitiesView {
            create: c.create,
            power: c.power,
            suspend: c.suspend,
            regions: c.regions,
            enrols: c.enrols,
        },
    };
    Ok(ok(s
        .fleet
        .backends(&me)
        .into_iter()
        .map(view)
        .collect::<Vec<_>>()))
}

/// The regions, in placement order.
#[utoipa::path(get, path = "/v1/regions", tag = "catalogue",
    responses((status = 200, description = "The regions, in placement order", body = Vec<RegionView>)))]
pub async fn list_regions(
    State(s): State<ApiState>,
    Caller(me): Caller,
) -> Result<Response, ApiError> {
    let regions = s.fleet.regions(&me);
    Ok(ok(regions
        .into_iter()
        .map(RegionView::from)
        .collect::<Vec<_>>()))
}

/// One region.
#[utoipa::path(get, path = "/v1/regions/{id}", tag = "catalogue",
    params(("id" = String, Path, description = "the region's name")),
    responses(
        (status = 200, description = "The region", body = RegionView),
        (status = 404, description = "No such region"),
    ))]
pub async fn get_region(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(name): Id<String>,
) -> Result<Response, ApiError> {
    Ok(ok(RegionView::from(s.fleet.region(&me, &name)?)))
}

/// The templates appliances are created from.
#[utoipa::path(get, path = "/v1/templates", tag = "catalogue",
    responses((status = 200, description = "The templates", body = Vec<TemplateView>)))]
pub async fn list_templates(
    State(s): State<ApiState>,
    Caller(me): Caller,
) -> Result<Response, ApiError> {
    let templates = s.fleet.templates(&me);
    Ok(ok(templates
        .into_iter()
        .map(TemplateView::from)
        .collect::<Vec<_>>()))
}

/// One template.
#[utoipa::path(get, path = "/v1/templates/{id}", tag = "catalogue",
    params(("id" = String, Path, description = "the template's name")),
    responses(
        (status = 200, description = "The template", body = TemplateView),
        (status = 404, description = "No such template"),
    ))]
pub async fn get_template(
    State(s): State<ApiState>,
    Caller(me): Caller,
    Id(name): Id<String>,
) -> Result<Response, ApiError> {
    Ok(ok(TemplateView::from(s.fleet.template(&me, &name)?)))
}
