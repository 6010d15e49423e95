//! The fleet's records as it reports them: in the API's answers and in the results it
//! keeps with finished tasks (one shape for both).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::controller::records::Appliance;

/// An appliance.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApplianceView {
    pub id: String,
    pub name: String,
    pub external_id: Option<String>,
    /// Its lifecycle state.
    pub state: String,
    pub state_since: String,
    pub ttl_minutes: i64,
    pub callback_url: Option<String>,
    /// Its management address, once it has one.
    pub address: Option<String>,
    pub agent_url: Option<String>,
    pub certificate: CertificateView,
    pub launched_at: Option<String>,
    pub expires_at: Option<String>,
    pub last_heartbeat_at: Option<String>,
    /// The agent's last `/status` snapshot.
    #[schema(value_type = Option<Object>)]
    pub last_status: Option<Value>,
    /// The team it belongs to.
    pub team_id: String,
    /// The user who asked for it.
    pub owner_id: String,
    /// The key pair it was made with.
    pub keypair_id: Option<String>,
    /// What it was made of (ids; the template when one was named) and where it is.
    pub template: Option<String>,
    pub image: Option<String>,
    pub flavor: Option<String>,
    pub network: Option<String>,
    pub region: Option<String>,
    /// The backend that serves it (`enrolled` for an appliance that joined by
    /// enrolment).
    pub backend: String,
    /// Where its `launched`, `expiring` and `stopped` events are mailed.
    pub notify_email: Option<String>,
    /// The cluster it belongs to.
    pub cluster_id: Option<String>,
    pub created_at: String,
}

/// The appliance's certificate, once issued.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CertificateView {
    pub serial: Option<String>,
    pub not_after: Option<String>,
}

impl From<&Appliance> for ApplianceView {
    fn from(a: &Appliance) -> Self {
        let time = |t: Option<i64>| t.map(crate::certs::format_unix);
        ApplianceView {
            id: a.id.clone(),
            name: a.name.clone(),
            external_id: a.external_id.clone(),
            state: a.state.as_str().to_string(),
            state_since: crate::certs::format_unix(a.state_since),
            ttl_minutes: a.ttl_minutes,
            callback_url: a.callback_url.clone(),
            address: a.address.clone(),
            agent_url: a
                .address
                .as_ref()
                .and_then(|_| super::Fleet::agent_url(a, "/").ok()),
            certificate: CertificateView {
                serial: a.cert_serial.clone(),
                not_after: time(a.cert_not_after),
            },
            launched_at: time(a.launched_at),
            expires_at: time(a.expires_at),
            last_heartbeat_at: time(a.last_heartbeat_at),
            last_status: a
                .last_status
                .as_deref()
                .and_then(|s| serde_json::from_str::<Value>(s).ok()),
            team_id: a.team_id.clone(),
            owner_id: a.owner_id.clone(),
            keypair_id: a.keypair_id.clone(),
            template: a.template.clone(),
            image: a.image.clone(),
            flavor: a.flavor.clone(),
            network: a.network.clone(),
            region: a.region.clone(),
            backend: a.backend.clone(),
            notify_email: a.notify_email.clone(),
            cluster_id: a.cluster_id.clone(),
            created_at: crate::certs::format_unix(a.created_at),
        }
    }
}
