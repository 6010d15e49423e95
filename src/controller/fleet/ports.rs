//! The small traits the fleet runs on, so that its rules run against fakes in unit
//! tests: the compute backend, the HTTPS client it calls agents and webhook receivers
//! with, and the clock (in [`super::Clock`]).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use bytes::Bytes;
use nix::sys::signal::Signal;

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

/// The compute backend: where appliances run. Its calls block (files, processes), so
/// the fleet makes them on the blocking pool.
pub trait Backend: Send + Sync + 'static {
    /// The management address of a slot, if the backend has that many.
    fn address(&self, slot: i64) -> Option<IpAddr>;
    /// Whether the appliance's files are written.
    fn provisioned(&self, id: &str) -> bool;
    /// Writes the appliance's certificate, key and configuration (idempotent).
    fn provision(
        &self,
        id: &str,
        slot: i64,
        address: IpAddr,
        issued: &Issued,
    ) -> std::io::Result<()>;
    /// Starts the appliance (idempotent); its process id.
    fn start(&self, id: &str) -> Result<i32, String>;
    /// Stops it, gracefully first.
    fn stop(&self, id: &str) -> Result<(), String>;
    /// Sends every process of the appliance a signal (suspend, resume).
    fn signal_all(&self, id: &str, signal: Signal) -> Result<(), String>;
    /// Stops it and removes its files.
    fn destroy(&self, id: &str) -> Result<(), String>;
}
