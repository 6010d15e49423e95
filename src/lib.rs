//! applianced: one binary for load-balancer appliance fleets.
//!
//! - [`agent`]: the daemon on every appliance (mutual-TLS API over its instances).
//! - [`pki`]: the certificate authority tool (`applianced pki`).
//! - [`transport`]: TLS and HTTP plumbing shared by the roles.
//! - [`config`]: typed TOML configuration and its validation.
#![forbid(unsafe_code)]

pub mod agent;
pub mod callback;
pub mod certs;
pub mod cli;
pub mod config;
pub mod controller;
pub mod fsutil;
pub mod logging;
pub mod pki;
pub mod process;
pub mod transport;

/// Process exit codes. Configuration problems get codes of their own so that systemd's
/// `RestartPreventExitStatus=` can stop a restart loop on a broken installation.
pub mod exit {
    /// Everything went well.
    pub const OK: i32 = 0;
    /// A runtime failure (I/O, a daemon that would not start, ...).
    pub const FAILURE: i32 = 1;
    /// The configuration is invalid (EX_CONFIG).
    pub const CONFIG: i32 = 78;
    /// Certificates, keys, CA bundles or CRLs could not be loaded.
    pub const TLS_MATERIAL: i32 = 79;
    /// A listener could not be bound.
    pub const BIND: i32 = 80;
}
