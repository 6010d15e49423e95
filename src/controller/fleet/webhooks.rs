//! Webhook deliveries: signed, retried with exponential backoff.

use super::*;

impl Fleet {
    pub async fn webhooks_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.webhooks_once().await;
        }
    }

    /// Sends the deliveries that are due, each claimed first (another controller may
    /// be sending too).
    pub(super) async fn webhooks_once(&self) {
        let now = self.clock.now();
        let due = match self.store.due_deliveries(now, 64).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "webhooks");
                return;
            }
        };
        let lease = now + self.config.webhooks.timeout.0.as_secs() as i64 + 5;
        let mut sends = Vec::new();
        for d in due {
            if matches!(self.store.claim_delivery(&d, lease).await, Ok(true)) {
                sends.push(self.deliver(d));
            }
        }
        futures_util::future::join_all(sends).await;
    }

    /// The signature of a delivery: HMAC-SHA256 over `TIMESTAMP.BODY`, hex.
    pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("sha256={}", crate::certs::hex(ctx.sign().as_ref()))
    }

    /// Mails an event to its appliance's `notify_email` (a `mailto:` delivery).
    async fn mail(&self, d: &crate::controller::records::Delivery) -> Result<(), String> {
        let to = d.url.strip_prefix("mailto:").unwrap_or_default();
        let mailer = self
            .mailer
            .as_ref()
            .ok_or("this controller has no SMTP server ([smtp])")?;
        let event: Value = serde_json::from_str(&d.body).unwrap_or(Value::Null);
        let appliance = match event["appliance_id"].as_str() {
            Some(id) => self.store.appliance(id).await.map_err(|e| e.to_string())?,
            None => None,
        };
        let (subject, body) = super::notify::mail_text(&event, appliance.as_ref());
        mailer
            .send(ports::Mail {
                to: to.to_string(),
                subject,
                body,
            })
            .await
    }

    pub(super) async fn deliver(&self, d: crate::controller::records::Delivery) {
        if d.url.starts_with("mailto:") {
            let now = self.clock.now();
            let error = self.mail(&d).await.err();
            let attempts = d.attempts + 1;
            let max = self
                .config
                .smtp
                .as_ref()
                .map_or(crate::config::controller::DEFAULT_MAIL_ATTEMPTS, |s| {
                    s.max_attempts
                });
            let state = match &error {
                None => DeliveryState::Delivered,
                Some(_) if attempts >= i64::from(max) => DeliveryState::Failed,
                Some(_) => DeliveryState::Pending,
            };
            if let Some(e) = &error {
                tracing::warn!(delivery = %d.id, attempt = attempts, error = %e, "mail not sent");
            }
            let next = now + (1i64 << attempts.min(8)).min(300);
            if let Err(e) = self
                .store
                .delivery_attempted(&d.id, state, None, error.as_deref(), next, now)
                .await
            {
                tracing::error!(delivery = %d.id, error = %e, "cannot record a mail");
            }
            return;
        }
        let now = self.clock.now();
        let event: Value = serde_json::from_str(&d.body).unwrap_or(Value::Null);
        let mut headers = agents::json_headers();
        headers.extend([
            ("x-applianced-delivery", d.id.clone()),
            (
                "x-applianced-event",
                event["event"].as_str().unwrap_or("").to_string(),
            ),
            ("x-applianced-timestamp", now.to_string()),
            (
                "x-applianced-signature",
                Self::signature(&self.secret, now, d.body.as_bytes()),
            ),
        ]);
        // The allowed hosts may have changed since the appliance was created.
        let allowed =
            operations::callback_host(&d.url).is_some_and(|h| self.config.webhooks.allows(&h));
        let (status, error) = if !allowed {
            (
                None,
                Some("the callback host is not in webhooks.allowed_hosts".to_string()),
            )
        } else {
            let outcome = self
                .hooks
                .call(Outgoing {
                    peer: None,
                    verb: Verb::Post,
                    url: d.url.clone(),
                    headers,
                    body: Bytes::from(d.body.clone()),
                })
                .await;
            match &outcome {
                Ok(r) if r.is_success() => (Some(i64::from(r.status)), None),
                Ok(r) => (
                    Some(i64::from(r.status)),
                    Some(format!("answered {}", r.status)),
                ),
                Err(e) => (None, Some(e.to_string())),
            }
        };
        let attempts = d.attempts + 1;
        let state = if error.is_none() {
            DeliveryState::Delivered
        } else if !allowed || attempts >= i64::from(self.config.webhooks.max_attempts) {
            DeliveryState::Failed
        } else {
            DeliveryState::Pending
        };
        let next = now + (1i64 << attempts.min(8)).min(300);
        if let Some(e) = &error {
            tracing::warn!(delivery = %d.id, url = %d.url, attempt = attempts, error = %e, "webhook not delivered");
        }
        if let Err(e) = self
            .store
            .delivery_attempted(&d.id, state, status, error.as_deref(), next, now)
            .await
        {
            tracing::error!(delivery = %d.id, error = %e, "cannot record a delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        // RFC 4231 test case 2 ("Jefe"), with the message split as TIMESTAMP "." BODY.
        let sig = Fleet::signature(b"Jefe", 0, b"");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let expected = hmac::sign(&key, b"1700000000.{\"a\":1}");
        assert_eq!(
            Fleet::signature(b"Jefe", 1_700_000_000, b"{\"a\":1}"),
            format!("sha256={}", crate::certs::hex(expected.as_ref()))
        );
    }
}
