//! The catalogue: what appliances are made from (images, flavors, networks), where they
//! are placed (regions), and the templates that name one of each. It is the backend's;
//! any signed-in user may read it.

use super::ports::{CatalogueEntry, Region};
use super::teams::Principal;
use super::*;

/// Which list of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Flavor,
    Network,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Flavor => "flavor",
            Kind::Network => "network",
        }
    }
}

/// A template: an image, a flavor and a network of one backend, in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub backend: &'static str,
    pub image: String,
    pub flavor: String,
    pub network: String,
    pub region: String,
}

impl Fleet {
    /// One list of the catalogue.
    pub fn catalogue_list(&self, _: &Principal, kind: Kind) -> Vec<CatalogueEntry> {
        let catalogue = self.backend.catalogue();
        match kind {
            Kind::Image => catalogue.images,
            Kind::Flavor => catalogue.flavors,
            Kind::Network => catalogue.networks,
        }
    }

    /// One entry, by id or by name (an id wins over another entry's name).
    pub fn catalogue_entry(
        &self,
        user: &Principal,
        kind: Kind,
        id_or_name: &str,
    ) -> Result<CatalogueEntry, FleetError> {
        let list = self.catalogue_list(user, kind);
        let by_id = list.iter().position(|e| e.id == id_or_name);
        let found = by_id.or_else(|| list.iter().position(|e| e.name == id_or_name));
        found
            .map(|i| list[i].clone())
            .ok_or_else(|| FleetError::NoSuchEntry(format!("no {} {id_or_name:?}", kind.name())))
    }

    /// Where appliances are placed, lowest priority value first.
    pub fn regions(&self, _: &Principal) -> Vec<Region> {
        let mut regions = self.backend.regions();
        regions.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        regions
    }

    pub fn region(&self, user: &Principal, name: &str) -> Result<Region, FleetError> {
        self.regions(user)
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| FleetError::NoSuchEntry(format!("no region {name:?}")))
    }

    /// The templates: the backend's own, made of the first entry of each list.
    pub fn templates(&self, user: &Principal) -> Vec<Template> {
        let catalogue = self.backend.catalogue();
        let first = |list: &[CatalogueEntry]| list.first().map(|e| e.id.clone());
        let region = self.regions(user).into_iter().next().map(|r| r.name);
        match (
            first(&catalogue.images),
            first(&catalogue.flavors),
            first(&catalogue.networks),
            region,
        ) {
            (Some(image), Some(flavor), Some(network), Some(region)) => vec![Template {
                name: self.backend.name().to_string(),
                backend: self.backend.name(),
                image,
                flavor,
                network,
                region,
            }],
            _ => Vec::new(),
        }
    }

    pub fn template(&self, user: &Principal, name: &str) -> Result<Template, FleetError> {
        self.templates(user)
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| FleetError::NoSuchEntry(format!("no template {name:?}")))
    }
}
