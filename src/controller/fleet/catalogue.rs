//! The catalogue: what appliances are made from (images, flavors, networks), where they
//! are placed (regions), and the templates that name one of each. It is the backend's;
//! any signed-in user may read it.

use super::ports::{Capabilities, CatalogueEntry, Region};
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
    /// The backend that makes it (by name).
    pub backend: String,
    pub image: String,
    pub flavor: String,
    pub network: String,
    pub region: Option<String>,
}

/// What an appliance is made of, resolved, and the regions it may be placed in (name
/// and capacity), in placement order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Make {
    /// The backend that makes it (by name).
    pub backend: String,
    pub template: Option<String>,
    pub image: String,
    pub flavor: String,
    pub network: String,
    pub regions: Vec<(String, i64)>,
}

impl Fleet {
    /// One list of the catalogue: every backend's (an id two backends share, once).
    pub fn catalogue_list(&self, _: &Principal, kind: Kind) -> Vec<CatalogueEntry> {
        let mut out: Vec<CatalogueEntry> = Vec::new();
        for (_, b) in &self.backends {
            for e in pick(b.catalogue(), kind) {
                if !out.iter().any(|known| known.id == e.id) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// One entry, by id or by name (an id wins over another entry's name).
    pub fn catalogue_entry(
        &self,
        user: &Principal,
        kind: Kind,
        id_or_name: &str,
    ) -> Result<CatalogueEntry, FleetError> {
        find_entry(self.catalogue_list(user, kind), id_or_name)
            .ok_or_else(|| FleetError::NoSuchEntry(format!("no {} {id_or_name:?}", kind.name())))
    }

    /// The backends: name, kind and what each can do, the default first, then the
    /// `enrolled` backend of appliances that joined by enrolment.
    pub fn backends(&self, _: &Principal) -> Vec<(String, &'static str, Capabilities)> {
        let mut all: Vec<_> = self
            .backends
            .iter()
            .map(|(name, b)| (name.clone(), b.name(), b.capabilities()))
            .collect();
        let enrolled = super::enrolments::EnrolledBackend;
        all.push((
            super::enrolments::ENROLLED.to_string(),
            enrolled.name(),
            enrolled.capabilities(),
        ));
        all
    }

    /// Where appliances are placed, with the backend that serves each, lowest priority
    /// value first.
    pub fn regions(&self, _: &Principal) -> Vec<(String, Region)> {
        let mut regions: Vec<(String, Region)> = self
            .backends
            .iter()
            .flat_map(|(name, b)| b.regions().into_iter().map(|r| (name.clone(), r)))
            .collect();
        regions.sort_by(|(_, a), (_, b)| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        regions
    }

    pub fn region(&self, user: &Principal, name: &str) -> Result<(String, Region), FleetError> {
        self.regions(user)
            .into_iter()
            .find(|(_, r)| r.name == name)
            .ok_or_else(|| FleetError::NoSuchEntry(format!("no region {name:?}")))
    }

    /// The templates: the configured ones, or else one per backend named after it, made
    /// of the first entry of each of its lists. An image or network a template leaves
    /// out is its backend's first.
    pub fn templates(&self, user: &Principal) -> Vec<Template> {
        let firsts = |b: &Arc<dyn Backend>| {
            let c = b.catalogue();
            let first = |list: &[CatalogueEntry]| list.first().map(|e| e.id.clone());
            match (first(&c.images), first(&c.flavors), first(&c.networks)) {
                (Some(i), Some(f), Some(n)) => Some((i, f, n)),
                _ => None,
            }
        };
        let configured = &self.config.templates;
        if configured.is_empty() {
            return self
                .backends
                .iter()
                .filter_map(|(name, b)| {
                    let (image, flavor, network) = firsts(b)?;
                    Some(Template {
                        name: name.clone(),
                        backend: name.clone(),
                        image,
                        flavor,
                        network,
                        region: None,
                    })
                })
                .collect();
        }
        let regions = self.regions(user);
        configured
            .iter()
            .filter_map(|t| {
                // Its backend: the one it names, else its region's, else the default.
                let backend = t
                    .backend
                    .clone()
                    .or_else(|| {
                        let r = t.region.as_ref()?;
                        regions
                            .iter()
                            .find(|(_, known)| &known.name == r)
                            .map(|(b, _)| b.clone())
                    })
                    .unwrap_or_else(|| self.default_backend().0.to_string());
                let (image, _, network) = firsts(&self.backend_named(&backend)?)?;
                Some(Template {
                    name: t.name.clone(),
                    backend,
                    image: t.image.clone().unwrap_or(image),
                    flavor: t.flavor.clone(),
                    network: t.network.clone().unwrap_or(network),
                    region: t.region.clone(),
                })
            })
            .collect()
    }

    /// What a create asks to be made of: a template (by default the first), or an
    /// image, a flavor and a network (each by id or name); and where: the region asked
    /// for, the template's, or every region in placement order.
    pub fn resolve_make(
        &self,
        caller: &Principal,
        backend: Option<&str>,
        template: Option<&str>,
        parts: [Option<&str>; 3],
        region: Option<&str>,
    ) -> Result<Make, FleetError> {
        let regions = self.regions(caller);
        if let Some(b) = backend
            && self.backend_named(b).is_none()
        {
            let names: Vec<&str> = self.backends.iter().map(|(n, _)| n.as_str()).collect();
            return Err(FleetError::Invalid(format!(
                "backend {b:?} is not configured ({})",
                names.join(", ")
            )));
        }
        // The backend asked for, else the region's, else (below) the template's or the
        // default one.
        let region_backend = region.and_then(|r| {
            regions
                .iter()
                .find(|(_, known)| known.name == r)
                .map(|(b, _)| b.clone())
        });
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
            let wanted_backend = backend.map(str::to_string).or(region_backend.clone());
            let found = match template {
                // The first template of the backend asked for (or of any).
                None => templates
                    .iter()
                    .find(|t| wanted_backend.as_ref().is_none_or(|b| &t.backend == b)),
                Some(t) => templates.iter().find(|known| known.name == t),
            };
            // A backend no template names: the first of each of its lists.
            let implicit = match (&found, template, &wanted_backend) {
                (None, None, Some(b)) => self.backend_named(b).and_then(|backend| {
                    let c = backend.catalogue();
                    Some(Template {
                        name: String::new(),
                        backend: b.clone(),
                        image: c.images.first()?.id.clone(),
                        flavor: c.flavors.first()?.id.clone(),
                        network: c.networks.first()?.id.clone(),
                        region: None,
                    })
                }),
                _ => None,
            };
            let t = found.or(implicit.as_ref()).ok_or_else(|| {
                let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
                invalid(format!(
                    "template {:?} is not in the catalogue ({})",
                    template.unwrap_or_default(),
                    names.join(", ")
                ))
            })?;
            if let Some(b) = &wanted_backend
                && &t.backend != b
            {
                return Err(invalid(format!(
                    "template {:?} is made by backend {:?}, not {b:?}",
                    t.name, t.backend
                )));
            }
            Make {
                backend: t.backend.clone(),
                template: (!t.name.is_empty()).then(|| t.name.clone()),
                image: t.image.clone(),
                flavor: t.flavor.clone(),
                network: t.network.clone(),
                regions: t.region.iter().map(|r| (r.clone(), 0)).collect(),
            }
        } else {
            let name = backend
                .map(str::to_string)
                .or(region_backend.clone())
                .unwrap_or_else(|| self.default_backend().0.to_string());
            let catalogue = self
                .backend_named(&name)
                .map(|b| b.catalogue())
                .unwrap_or_default();
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
                let entry = find_entry(pick(catalogue.clone(), kind), given).ok_or_else(|| {
                    invalid(format!(
                        "{} {given:?} is not in the catalogue of backend {name:?}",
                        kind.name()
                    ))
                })?;
                ids.push(entry.id);
            }
            let [image, flavor, network]: [String; 3] = ids
                .try_into()
                .map_err(|_| FleetError::Internal("three parts".into()))?;
            Make {
                backend: name,
                template: None,
                image,
                flavor,
                network,
                regions: Vec::new(),
            }
        };
        let wanted = region
            .map(str::to_string)
            .or(make.regions.first().map(|r| r.0.clone()));
        // Only the regions of the backend that makes it.
        let mine = regions.into_iter().filter(|(b, _)| *b == make.backend);
        make.regions = match wanted {
            Some(name) => {
                let (_, r) = mine
                    .into_iter()
                    .find(|(_, r)| r.name == name)
                    .ok_or_else(|| {
                        invalid(format!(
                            "region {name:?} is not a region of backend {:?}",
                            make.backend
                        ))
                    })?;
                vec![(r.name, i64::from(r.capacity))]
            }
            None => mine.map(|(_, r)| (r.name, i64::from(r.capacity))).collect(),
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

/// One list of a catalogue.
fn pick(c: ports::Catalogue, kind: Kind) -> Vec<CatalogueEntry> {
    match kind {
        Kind::Image => c.images,
        Kind::Flavor => c.flavors,
        Kind::Network => c.networks,
    }
}

/// An entry by id, else by name.
fn find_entry(list: Vec<CatalogueEntry>, id_or_name: &str) -> Option<CatalogueEntry> {
    let by_id = list.iter().position(|e| e.id == id_or_name);
    let found = by_id.or_else(|| list.iter().position(|e| e.name == id_or_name));
    found.map(|i| list[i].clone())
}
