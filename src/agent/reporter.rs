//! Callbacks to the controller (`[controller]`): `launched` once the agent serves,
//! retried until the controller takes it; then a `heartbeat` every interval carrying the
//! current `/status` snapshot; `stopped` on a graceful shutdown. Each is a
//! `POST /v1/events` over mutual TLS with the agent's own certificate, read from disk
//! for every call, so a certificate replaced by `PUT /certificate` is used at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use super::status::StatusCache;
use crate::callback::{Callback, CallbackEvent};
use crate::config::agent::ControllerSection;
use crate::transport::client::{Client, client_config_from_files, json_headers};

/// Time one callback may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between attempts at `launched`.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Reporter {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub interval: Duration,
    pub appliance_id: String,
    pub status: Arc<StatusCache>,
}

impl Reporter {
    pub fn new(
        section: &ControllerSection,
        default_ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        appliance_id: String,
        status: Arc<StatusCache>,
    ) -> Reporter {
        Reporter {
            url: format!("{}/v1/events", section.url.trim_end_matches('/')),
            ca: section.ca.clone().unwrap_or(default_ca),
            cert,
            key,
            interval: section.heartbeat_interval.0,
            appliance_id,
            status,
        }
    }

    /// Posts one event; Ok when the controller answered 2xx.
    pub async fn post(&self, event: CallbackEvent, timeout: Duration) -> Result<(), String> {
        let tls = client_config_from_files(&self.ca, Some((&self.cert, &self.key)))?;
        let status: serde_json::Value =
            serde_json::from_slice(&self.status.load()).unwrap_or(serde_json::Value::Null);
        let body = serde_json::to_string(&Callback {
            event,
            appliance_id: Some(self.appliance_id.clone()),
            status: Some(status),
        })
        .unwrap_or_default();
        let reply = Client::new(Some(Arc::new(tls)), timeout)
            .send(Method::POST, &self.url, json_headers(), Bytes::from(body))
            .await
            .map_err(|e| e.to_string())?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ))
        }
    }

    /// `launched` until accepted, then heartbeats forever (the task is dropped at shutdown).
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.post(CallbackEvent::Launched, CALL_TIMEOUT).await {
                Ok(()) => {
                    tracing::info!(controller = %self.url, "reported launched");
                    break;
                }
                Err(e) => {
                    tracing::warn!(controller = %self.url, error = %e, retry_in = ?backoff, "cannot report launched");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self
                .post(CallbackEvent::Heartbeat, CALL_TIMEOUT.min(self.interval))
                .await
            {
                tracing::warn!(controller = %self.url, error = %e, "heartbeat not delivered");
            }
        }
    }
}
