//! The notification mail of an appliance's event: it names the appliance, its address
//! and its times, and nothing else (never a key or a certificate).

use serde_json::Value;

use crate::controller::records::Appliance;

/// The subject and body of the mail for `event` (a delivery's body) about `a` as it is
/// now (`None` when it is gone).
pub fn mail_text(event: &Value, a: Option<&Appliance>) -> (String, String) {
    let kind = event["event"].as_str().unwrap_or("event");
    let id = event["appliance_id"].as_str().unwrap_or_default();
    let at = event["at"].as_str().unwrap_or_default();
    let name = a.map_or(id, |a| a.name.as_str());
    let what = match kind {
        "launched" => "is up",
        "expiring" => "expires in 5 minutes",
        "stopped" => "has stopped",
        _ => "changed",
    };
    let subject = format!("applianced: appliance {name} {what}");
    let time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), crate::certs::format_unix);
    let mut body = format!(
        "Appliance {name} ({id}) {what}.\n\n\
         Event:       {kind} at {at}\n"
    );
    if let Some(a) = a {
        body.push_str(&format!(
            "State:       {}\n\
             Address:     {}\n\
             Region:      {}\n\
             Launched at: {}\n\
             Expires at:  {}\n",
            a.state.as_str(),
            a.address.as_deref().unwrap_or("-"),
            a.region.as_deref().unwrap_or("-"),
            time(a.launched_at),
            time(a.expires_at),
        ));
    }
    body.push_str(
        "\nThis mail was sent by the applianced controller: this address was given as the \
         appliance's notify_email.\n",
    );
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::lifecycle::State;

    #[test]
    fn a_mail_names_the_appliance_its_address_and_times_and_nothing_secret() {
        let a = Appliance {
            id: "a-1".into(),
            name: "lb-1".into(),
            team_id: "t".into(),
            owner_id: "u".into(),
            external_id: None,
            request_hash: "secret-hash".into(),
            state: State::Active,
            state_since: 0,
            ttl_minutes: 60,
            callback_url: Some("https://hooks.example/x?token=secret".into()),
            slot: Some(0),
            address: Some("127.0.1.1".into()),
            agent_port: Some(9443),
            cert_serial: Some("0A".into()),
            cert_not_after: Some(1),
            launched_at: Some(1_800_000_000),
            expires_at: Some(1_800_003_600),
            last_heartbeat_at: None,
            last_status: Some("{\"x\": 1}".into()),
            created_at: 0,
            keypair_id: Some("k".into()),
            authorized_key: Some("ssh-ed25519 AAAAsecret".into()),
            template: None,
            image: None,
            flavor: None,
            network: None,
            region: Some("near".into()),
            notify_email: Some("ops@example.com".into()),
            cluster_id: None,
            backend: "process".into(),
            public_key: None,
        };
        let event = serde_json::json!({"event": "launched", "appliance_id": "a-1",
            "at": "2027-01-15T08:00:00Z"});
        let (subject, body) = mail_text(&event, Some(&a));
        assert_eq!(subject, "applianced: appliance lb-1 is up");
        for wanted in [
            "Appliance lb-1 (a-1) is up.",
            "launched at 2027-01-15T08:00:00Z",
            "127.0.1.1",
            "near",
            "Launched at: 2027-01-15T08:00:00Z",
            "Expires at:  2027-01-15T09:00:00Z",
        ] {
            assert!(body.contains(wanted), "{wanted}: {body}");
        }
        for secret in ["ssh-ed25519", "secret", "PRIVATE", "0A"] {
            assert!(!body.contains(secret), "{secret}: {body}");
        }
        let (subject, body) = mail_text(&event, None);
        assert_eq!(subject, "applianced: appliance a-1 is up");
        assert!(body.contains("(a-1)"));
    }
}
