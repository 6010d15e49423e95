//! The small traits the fleet runs on, so that its rules run against fakes in unit
//! tests: the compute backend, the HTTPS client it calls agents and webhook receivers
//! with, and the clock (in [`super::Clock`]).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use bytes::Bytes;
use serde::Serialize;

use super::ids::ApplianceId;
use crate::pki::Issued;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The methods the fleet calls with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Put,
    Post,
    Delete,
}

/// A request: to a URL, with headers (lowercase names) and a body.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub verb: Verb,
    pub url: String,
    /// The common name the server's certificate must carry (an appliance's id: an
    /// address alone could be another appliance's); `None` for any name the URL's host
    /// is valid for.
    pub peer: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// An answer, its body read whole.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Incoming {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing was sent (no connection, no TLS session): safe to try again.
    #[error("{0}")]
    NotSent(String),
    /// Sent, but no answer in time or the exchange broke: may have been done.
    #[error("{0}")]
    Broken(String),
    /// Trying again cannot help (a bad URL, no TLS configured).
    #[error("{0}")]
    Refused(String),
}

/// An HTTPS client: agents are called with the controller's client certificate,
/// webhook receivers with none.
pub trait AgentClient: Send + Sync {
    fn call(&self, request: Outgoing) -> BoxFuture<'_, Result<Incoming, CallError>>;
}

/// A mail to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Sends mail (through the configured SMTP server; a fake in tests).
pub trait Mailer: Send + Sync {
    /// Sends one mail; the error says why the server did not take it.
    fn send(&self, mail: Mail) -> BoxFuture<'_, Result<(), String>>;
}

/// What a backend can do to its machines, so that the fleet refuses (409) what an
/// appliance's backend cannot do instead of failing half-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Creates machines (otherwise they join from outside).
    pub create: bool,
    /// Powers machines off and on again (`stop`, `start`).
    pub power: bool,
    /// Pauses and resumes machines (`suspend`, `resume`).
    pub suspend: bool,
    /// Serves more than one region.
    pub regions: bool,
    /// Its machines join by enrolment: they are given a one-time token (in the command
    /// their first boot runs), make their own key and ask for their certificate, instead
    /// of being handed one.
    pub enrols: bool,
}

/// An action on an existing machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineAction {
    Start,
    Stop,
    Suspend,
    Resume,
}

impl MachineAction {
    pub fn name(self) -> &'static str {
        match self {
            MachineAction::Start => "start",
            MachineAction::Stop => "stop",
            MachineAction::Suspend => "suspend",
            MachineAction::Resume => "resume",
        }
    }

    /// Whether a backend with these capabilities can do it.
    pub fn supported_by(self, c: Capabilities) -> bool {
        match self {
            MachineAction::Start | MachineAction::Stop => c.power,
            MachineAction::Suspend | MachineAction::Resume => c.suspend,
        }
    }
}

/// A machine as its backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    /// Never created, or deleted.
    Absent,
    /// Created, not running.
    Stopped,
    /// Running (with its process id where the backend has one).
    Running { pid: Option<i32> },
    /// Paused.
    Suspended,
}

/// One entry of a backend's catalogue: an image, a flavor or a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogueEntry {
    pub id: String,
    pub name: String,
    pub description: String,
}

/// What appliances can be made from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Catalogue {
    pub images: Vec<CatalogueEntry>,
    pub flavors: Vec<CatalogueEntry>,
    pub networks: Vec<CatalogueEntry>,
}

/// Where a backend places machines: placement prefers a lower `priority` and never
/// exceeds `capacity` machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Region {
    pub name: String,
    pub priority: u32,
    pub capacity: u32,
}

/// What a machine is made with.
pub struct MachineSpec<'a> {
    pub id: &'a ApplianceId,
    /// Its name (cloud backends tag the machine with it).
    pub name: &'a str,
    /// How it gets its certificate.
    pub join: Join<'a>,
    /// An OpenSSH public key to install where the backend installs keys.
    pub authorized_key: Option<&'a str>,
    /// Its flavor (an id of the backend's catalogue).
    pub flavor: &'a str,
    /// Its image and network (ids of the backend's catalogue), when chosen.
    pub image: Option<&'a str>,
    pub network: Option<&'a str>,
}

/// How a machine gets its certificate.
pub enum Join<'a> {
    /// Handed to it: the controller issued its key and certificate for the address of
    /// its placement slot.
    Issued {
        slot: i64,
        address: IpAddr,
        issued: &'a Issued,
    },
    /// It enrols (a backend whose capabilities say `enrols`): its first boot runs this
    /// command, which holds a one-time token for this machine alone.
    Enrol { command: &'a str },
}

/// Why a backend did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The controller's own side failed (its files, a full disk): an internal error.
    #[error("{0}")]
    Local(#[from] std::io::Error),
    /// The backend refused or failed: a bad gateway.
    #[error("{0}")]
    Failed(String),
    /// The backend has no room now (a cloud's capacity or quota): try again later.
    #[error("{0}")]
    NoCapacity(String),
    /// The backend cannot do this at all.
    #[error("the {backend} backend cannot {action} appliances")]
    Unsupported {
        backend: &'static str,
        action: &'static str,
    },
}

/// The compute backend: where appliances run. Its calls block (files, processes, cloud
/// APIs), so the fleet makes them on the blocking pool.
pub trait Backend: Send + Sync + 'static {
    /// The backend's name in configurations and problems (`process`).
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Images, flavors and networks.
    fn catalogue(&self) -> Catalogue;
    fn regions(&self) -> Vec<Region>;
    /// The management address of a slot, if the backend has that many.
    fn address(&self, slot: i64) -> Option<IpAddr>;
    /// The slots its machines hold (none for a backend without slots).
    fn slots(&self) -> std::ops::Range<i64>;
    /// The port its machines' agents listen on.
    fn agent_port(&self) -> u16;
    /// Makes the machine and starts it, idempotently: a machine that exists already is
    /// made again to the spec (a new certificate replaces the old one). Its state after.
    fn create(&self, spec: &MachineSpec<'_>) -> Result<MachineState, BackendError>;
    /// The machine's state now.
    fn get(&self, id: &ApplianceId) -> Result<MachineState, BackendError>;
    /// Acts on an existing machine (idempotent: starting a running one does nothing).
    fn action(&self, id: &ApplianceId, action: MachineAction) -> Result<(), BackendError>;
    /// Stops the machine and removes everything it had (idempotent).
    fn delete(&self, id: &ApplianceId) -> Result<(), BackendError>;
}
