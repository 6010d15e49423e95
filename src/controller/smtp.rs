//! The fleet's [`Mailer`] on lettre's SMTP transport: STARTTLS or TLS (rustls, trusting
//! the system's CAs and optionally one more), optional authentication, a timeout per
//! attempt. The fleet queues and retries; this only sends.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::fleet::ports::{Mail, Mailer};
use crate::config::controller::{Smtp, SmtpTls};

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    /// A mailer for the configured server; its password and CA files are read now.
    pub fn new(config: &Smtp) -> Result<Arc<SmtpMailer>, String> {
        let from: Mailbox = config.from.parse().map_err(|e| format!("smtp.from: {e}"))?;
        let tls = || -> Result<TlsParameters, String> {
            let mut params = TlsParameters::builder(config.host.clone());
            if let Some(ca) = &config.ca_file {
                let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                let cert =
                    Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
                params = params.add_root_certificate(cert);
            }
            params.build_rustls().map_err(|e| format!("smtp TLS: {e}"))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port())
            .timeout(Some(config.timeout.0))
            .tls(match config.tls {
                SmtpTls::None => Tls::None,
                SmtpTls::Starttls => Tls::Required(tls()?),
                SmtpTls::Tls => Tls::Wrapper(tls()?),
            });
        if let (Some(user), Some(file)) = (&config.username, &config.password_file) {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let password = text.lines().next().unwrap_or_default().to_string();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Arc::new(SmtpMailer {
            transport: builder.build(),
            from,
        }))
    }
}

impl Mailer for Arc<SmtpMailer> {
    fn send(&self, mail: Mail) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let to: Mailbox = mail
                .to
                .parse()
                .map_err(|e| format!("recipient {:?}: {e}", mail.to))?;
            let message = Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(mail.subject)
                .header(ContentType::TEXT_PLAIN)
                .body(mail.body)
                .map_err(|e| e.to_string())?;
            self.transport
                .send(message)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}
