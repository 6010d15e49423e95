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

/// A template: an image, a flavor and a network of one backend (ids), and optionally
/// a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub backend: &'static str,
    pub image: String,
    pub flavor: String,
    pub network: String,
    pub region: Option<String>,
}

/// What an appliance is made of, resolved, and the regions it may be placed in (name
/// and capacity), in placement order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Make {
    pub template: Option<String>,
    pub image: String,
    pub flavor: String,
    pub network: String,
    pub regions: Vec<(String, i64)>,
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

    /// The templates: the configured ones, or else one named after the backend made of
    /// the first entry of each list. An image or network a template leaves out is the
    /// backend's first.
    pub fn templates(&self, _: &Principal) -> Vec<Template> {
        let catalogue = self.backend.catalogue();
        let first = |list: &[CatalogueEntry]| list.first().map(|e| e.id.clone());
        let (Some(image), Some(flavor), Some(network)) = (
            first(&catalogue.images),
            first(&catalogue.flavors),
            first(&catalogue.networks),
        ) else {
            return Vec::new();
        };
        let configured = &self.config.templates;
        if configured.is_empty() {
            return vec![Template {
                name: self.backend.name().to_string(),
                backend: self.backend.name(),
                image,
                flavor,
                network,
                region: None,
            }];
        }
        configured
            .iter()
            .map(|t| Template {
                name: t.name.clone(),
                backend: self.backend.name(),
                image: t.image.clone().unwrap_or_else(|| image.clone()),
                flavor: t.flavor.clone(),
                network: t.network.clone().unwrap_or_else(|| network.clone()),
                region: t.region.clone(),
            })
            .collect()
    }

    /// What a create asks to be made of: a template (by default the first), or an
    /// image, a flavor and a network (each by id or name); and where: the region asked
    /// for, the template's, or every region in placement order.
    pub fn resolve_make(
        &self,
        caller: &Principal,
        template: Option<&str>,
        parts: [Option<&str>; 3],
        region: Option<&str>,
    ) -> Result<Make, FleetError> {
        let invalid = |m: String| FleetError::Invalid(m);
        let [image, flavor, network] = parts;
        let any_part = parts.iter().any(Option::is_some);
        let mut make = if template.is_some() || !any_part {
            if any_part {
                return Err(invalid(
                    "template, or image, flavor and network: not both".into(),
                ));
            }
            let templates = self.templates(caller);
            let found = match template {
                None => templates.first(),
                Some(t) => templates.iter().find(|known| known.name == t),
            };
            let t = found.ok_or_else(|| {
                let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
                invalid(format!(
                    "template {:?} is not in the catalogue ({})",
                    template.unwrap_or_default(),
                    names.join(", ")
                ))
            })?;
            Make {
                template: Some(t.name.clone()),
                image: t.image.clone(),
                flavor: t.flavor.clone(),
                network: t.network.clone(),
                regions: t.region.iter().map(|r| (r.clone(), 0)).collect(),
            }
        } else {
            let mut ids = Vec::new();
            for (kind, given) in [
                (Kind::Image, image),
                (Kind::Flavor, flavor),
                (Kind::Network, network),
            ] {
                let given = given.ok_or_else(|| {
                    invalid(format!(
                        "{}: image, flavor and network go together (or name a template)",
                        kind.name()
                    ))
                })?;
                let entry = self.catalogue_entry(caller, kind, given).map_err(|_| {
                    invalid(format!("{} {given:?} is not in the catalogue", kind.name()))
                })?;
                ids.push(entry.id);
            }
            let [image, flavor, network]: [String; 3] = ids
                .try_into()
                .map_err(|_| FleetError::Internal("three parts".into()))?;
            Make {
                template: None,
                image,
                flavor,
                network,
                regions: Vec::new(),
            }
        };
        let regions = self.regions(caller);
        let wanted = region
            .map(str::to_string)
            .or(make.regions.first().map(|r| r.0.clone()));
        make.regions = match wanted {
            Some(name) => {
                let r = regions
                    .into_iter()
                    .find(|r| r.name == name)
                    .ok_or_else(|| invalid(format!("region {name:?} is not in the catalogue")))?;
                vec![(r.name, i64::from(r.capacity))]
            }
            None => regions
                .into_iter()
                .map(|r| (r.name, i64::from(r.capacity)))
                .collect(),
        };
        Ok(make)
    }

    pub fn template(&self, user: &Principal, name: &str) -> Result<Template, FleetError> {
        self.templates(user)
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| FleetError::NoSuchEntry(format!("no template {name:?}")))
    }
}
