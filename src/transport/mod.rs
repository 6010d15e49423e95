//! Transport shared by the agent and the controller: TLS with a typed client identity,
//! certificates that can be swapped while serving, and a hardened HTTP server loop.
//! It knows nothing of instances or bundles.

mod activity;
pub mod body;
pub mod client;
pub mod descriptors;
pub mod server;
pub mod tls;

pub use server::{App, ConnInfo, ServerLimits, TransportMetrics};
pub use tls::{ClientIdentity, TlsMaterial, TlsSettings};
