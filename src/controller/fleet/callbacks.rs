//! Callbacks from the appliances themselves (`launched`, `heartbeat`, `stopped`).

use super::*;
use crate::callback::{Callback, CallbackEvent};

impl Fleet {
    /// A callback from the appliance named by the caller's certificate.
    pub async fn callback(&self, caller: &str, cb: Callback) -> Result<Appliance, FleetError> {
        if cb.appliance_id.as_deref().is_some_and(|id| id != caller) {
            return Err(FleetError::Forbidden(format!(
                "the certificate of {caller} cannot report for another appliance"
            )));
        }
        let a = match self.store.appliance(caller).await? {
            Some(a) if a.state != State::Deleted => a,
            _ => {
                return Err(FleetError::Forbidden(format!(
                    "{caller} is not an appliance of this controller"
                )));
            }
        };
        let now = self.clock.now();
        let status = cb.status.filter(|s| !s.is_null()).map(|s| s.to_string());
        match cb.event {
            CallbackEvent::Launched => {
                // An appliance whose backend cannot power it (an enrolled one) is powered
                // by its owner: one that was stopped and comes back says `launched`, and
                // boots again.
                if a.state == State::Stopped && !self.backend_of(&a)?.capabilities().power {
                    self.apply(
                        &a.id,
                        Event::Start,
                        |_| Changes::default(),
                        Some(json!({"reported_by": "appliance"})),
                    )
                    .await?;
                }
                let ttl = a.ttl_minutes * 60;
                // Without a time to live (an enrolled appliance), it never expires.
                let expires = (ttl > 0).then_some(now + ttl);
                self.apply(
                    &a.id,
                    Event::Launched,
                    |cur| Changes {
                        // The expiry clock starts at the first `launched` after a boot.
                        launched_at: matches!(cur.state, State::Booting | State::LaunchTimeout)
                            .then_some(now),
                        expires_at: expires
                            .filter(|_| matches!(cur.state, State::Booting | State::LaunchTimeout)),
                        last_heartbeat_at: Some(now),
                        last_status: status.clone(),
                        ..Changes::default()
                    },
                    None,
                )
                .await
            }
            CallbackEvent::Heartbeat => {
                self.apply(
                    &a.id,
                    Event::Heartbeat,
                    |_| Changes {
                        last_heartbeat_at: Some(now),
                        last_status: status.clone(),
                        ..Changes::default()
                    },
                    None,
                )
                .await
            }
            CallbackEvent::Stopped => {
                self.apply(
                    &a.id,
                    Event::StoppedCallback,
                    |_| Changes::default(),
                    Some(json!({"reported_by": "appliance"})),
                )
                .await
            }
        }
    }
}
