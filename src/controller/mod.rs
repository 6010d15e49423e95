//! `applianced controller`: the fleet side. This release serves the operators' part of
//! the northbound API on `admin` listeners ([`api`]: tokens and users), over the store
//! ([`store`], SQLite or PostgreSQL through one code path) with operator credentials
//! ([`auth`]). Spawning appliances, tasks, and the `api` and `appliance` zones come next.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::controller::ControllerConfig;
use crate::exit;
use crate::transport::TlsMaterial;
use crate::transport::server::{Server, ServerLimits, TransportMetrics, bind, notify_ready};

pub mod api;
pub mod auth;
pub mod store;

/// Runs the controller until SIGTERM; returns the exit code.
pub fn run(config: ControllerConfig) -> i32 {
    crate::transport::server::run_to_exit(0, run_async(config))
}

async fn run_async(config: ControllerConfig) -> i32 {
    let mut bound = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let material = match TlsMaterial::for_listener(&l.cert, &l.key, l.client_ca.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("listeners[{i}]: {e}");
                return exit::TLS_MATERIAL;
            }
        };
        match bind(l.address) {
            Ok(socket) => bound.push((l.zone, socket, material)),
            Err(e) => {
                tracing::error!(address = %l.address, error = %e, "cannot listen");
                return exit::BIND;
            }
        }
    }
    let store =
        match store::Store::open(&config.database.url, config.database.max_connections).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!("cannot open the store: {e}");
                return exit::FAILURE;
            }
        };
    let metrics = TransportMetrics::default();
    let mut servers = Vec::new();
    for (zone, socket, material) in bound {
        let app = Arc::new(api::ControllerApp {
            store: store.clone(),
            zone,
        });
        let addr = socket
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%addr, ?zone, "controller listening");
        let tls = Arc::new(ArcSwap::from_pointee(material));
        servers.push(Server::start(
            vec![socket],
            tls,
            ServerLimits::default(),
            metrics.clone(),
            app,
        ));
    }
    notify_ready();
    if let Err(e) = wait_for_termination().await {
        tracing::error!(error = %e, "cannot install signal handlers");
        return exit::FAILURE;
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    for server in servers {
        server.shutdown().await;
    }
    store.close().await;
    tracing::info!("stopped");
    exit::OK
}

async fn wait_for_termination() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}
