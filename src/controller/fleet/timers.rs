//! The timers: expiry and its warning, watchdogs, certificate rotation; all clocks are in the store.

use super::*;

impl Fleet {
    pub(super) fn timers(&self) -> Timers {
        let a = &self.config.appliances;
        let secs = |d: crate::config::HumanDuration| {
            i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX).max(1)
        };
        Timers {
            warning_before: EXPIRY_WARNING_SECS,
            launch_timeout: secs(a.launch_timeout),
            heartbeat_interval: secs(a.heartbeat_interval),
            missed_heartbeats: i64::from(a.missed_heartbeats),
            stop_timeout: secs(a.stop_timeout),
            rotate_before: i64::from(self.config.pki.rotate_before_days) * 86_400,
        }
    }

    /// Looks at every appliance with a running clock once a second.
    pub async fn timers_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.timers_once().await {
                tracing::error!(error = %e, "timers");
            }
        }
    }

    pub(super) async fn timers_once(&self) -> Result<(), FleetError> {
        let now = self.clock.now();
        let timers = self.timers();
        for (id, owner, clock) in self.store.timed_clocks().await? {
            let result = match lifecycle::due(&clock, now, &timers) {
                None => Ok(()),
                Some(Due::Rotate) => self
                    .queue(TaskKind::RotateCertificate, Some(&id), &owner, json!({}))
                    .await
                    .map(|_| ()),
                // The stop is queued with the move: if another operation still runs,
                // neither happens and the next tick tries again.
                Some(Due::Event(Event::Expired)) => self
                    .apply_and_queue(
                        &id,
                        Event::Expired,
                        TaskKind::Stop,
                        &owner,
                        json!({"reason": "expired"}),
                    )
                    .await
                    .map(|_| ()),
                Some(Due::Event(event)) => {
                    let detail = match event {
                        Event::ExpiryWarning => clock
                            .expires_at
                            .map(|e| json!({"expires_at": crate::certs::format_unix(e)})),
                        _ => None,
                    };
                    self.apply(&id, event, |_| Changes::default(), detail)
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) | Err(FleetError::Conflict(_)) => {}
                Err(e) => tracing::warn!(appliance = %id, error = %e, "timer"),
            }
        }
        Ok(())
    }
}
