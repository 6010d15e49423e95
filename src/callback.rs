//! The one definition of an appliance's callback to its controller (`POST /v1/events`
//! on the controller's appliance listeners): the agent's reporter sends it, the
//! controller reads it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// What the appliance reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallbackEvent {
    /// The agent serves (after every start).
    Launched,
    /// Still alive, with the current status.
    Heartbeat,
    /// Shutting down gracefully.
    Stopped,
}

impl CallbackEvent {
    pub fn name(self) -> &'static str {
        match self {
            CallbackEvent::Launched => "launched",
            CallbackEvent::Heartbeat => "heartbeat",
            CallbackEvent::Stopped => "stopped",
        }
    }
}

/// A callback body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Callback {
    pub event: CallbackEvent,
    /// The appliance reporting; when given, it must be the one the certificate names.
    #[serde(default)]
    pub appliance_id: Option<String>,
    /// The agent's `/status` snapshot.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub status: Option<Value>,
}
