//! The appliance lifecycle: states, the events that move them, and the one fixed table
//! of allowed moves. Anything the table does not allow is a 409 at the API. Pure logic;
//! the timers' decisions ([`due`]) are pure too, so both are tested without a clock.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Requested,
    Provisioning,
    Booting,
    Active,
    Expiring,
    Unhealthy,
    Suspended,
    Stopping,
    StopUnconfirmed,
    Stopped,
    LaunchTimeout,
    Failed,
    Deleted,
}

pub const ALL_STATES: [State; 13] = [
    State::Requested,
    State::Provisioning,
    State::Booting,
    State::Active,
    State::Expiring,
    State::Unhealthy,
    State::Suspended,
    State::Stopping,
    State::StopUnconfirmed,
    State::Stopped,
    State::LaunchTimeout,
    State::Failed,
    State::Deleted,
];

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Requested => "requested",
            State::Provisioning => "provisioning",
            State::Booting => "booting",
            State::Active => "active",
            State::Expiring => "expiring",
            State::Unhealthy => "unhealthy",
            State::Suspended => "suspended",
            State::Stopping => "stopping",
            State::StopUnconfirmed => "stop_unconfirmed",
            State::Stopped => "stopped",
            State::LaunchTimeout => "launch_timeout",
            State::Failed => "failed",
            State::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        ALL_STATES.into_iter().find(|st| st.as_str() == s)
    }

    /// The agent process is expected to be up (it is called, pinged, watched).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            State::Active | State::Expiring | State::Unhealthy | State::Booting
        )
    }

    /// The appliance holds its machine, so its minutes count as usage: from `booting`
    /// until it is stopped, failed or deleted (suspended included: its resources stay
    /// taken).
    pub fn is_billed(self) -> bool {
        matches!(
            self,
            State::Booting
                | State::Active
                | State::Expiring
                | State::Unhealthy
                | State::Suspended
                | State::Stopping
                | State::StopUnconfirmed
        )
    }

    /// The expiry clock runs (started at `launched`).
    pub fn expires(self) -> bool {
        matches!(
            self,
            State::Active | State::Expiring | State::Unhealthy | State::Suspended
        )
    }
}

/// What can happen to an appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A worker picked up the create task.
    Provision,
    /// The backend started the appliance.
    Spawned,
    /// The backend could not create it, or could not start it.
    ProvisionFailed,
    /// Callbacks from the appliance itself.
    Launched,
    Heartbeat,
    StoppedCallback,
    /// Timers.
    ExpiryWarning,
    Expired,
    LaunchTimedOut,
    HeartbeatsMissed,
    StopTimedOut,
    /// Operator actions.
    Start,
    Stop,
    Suspend,
    Resume,
    Extend,
    Destroy,
    RotateCertificate,
    /// The backend confirmed the appliance is gone.
    Destroyed,
}

impl Event {
    /// The name recorded in the event log and sent in webhooks.
    pub fn name(self) -> &'static str {
        match self {
            Event::Provision => "provisioning",
            Event::Spawned => "spawned",
            Event::ProvisionFailed => "failed",
            Event::Launched => "launched",
            Event::Heartbeat => "heartbeat",
            Event::StoppedCallback => "stopped",
            Event::ExpiryWarning => "expiring",
            Event::Expired => "expired",
            Event::LaunchTimedOut => "launch_timeout",
            Event::HeartbeatsMissed => "unhealthy",
            Event::StopTimedOut => "stop_unconfirmed",
            Event::Start => "start",
            Event::Stop => "stop",
            Event::Suspend => "suspend",
            Event::Resume => "resume",
            Event::Extend => "extend",
            Event::Destroy => "destroy",
            Event::RotateCertificate => "rotate-certificate",
            Event::Destroyed => "deleted",
        }
    }

    /// Operator actions by their API name.
    pub fn action(name: &str) -> Option<Event> {
        Some(match name {
            // `on` and `off` are seed 000's names for them.
            "start" | "on" => Event::Start,
            "stop" | "off" => Event::Stop,
            "suspend" => Event::Suspend,
            "resume" => Event::Resume,
            "extend" => Event::Extend,
            "destroy" => Event::Destroy,
            "rotate-certificate" => Event::RotateCertificate,
            _ => return None,
        })
    }
}

/// The state `event` moves `from` to, or `None` when the table does not allow it.
/// Events that are allowed but change nothing (a heartbeat while active) return `from`.
pub fn next(from: State, event: Event) -> Option<State> {
    use Event as E;
    use State as S;
    let to = match (from, event) {
        (S::Requested, E::Provision) => S::Provisioning,
        // A create task resumed after a controller restart provisions again.
        (S::Provisioning, E::Provision) => S::Provisioning,
        (S::Provisioning, E::Spawned) => S::Booting,
        (S::Requested | S::Provisioning, E::ProvisionFailed) => S::Failed,
        // The backend refused to start it again: failed now rather than at launch_timeout.
        (S::Booting, E::ProvisionFailed) => S::Failed,

        (S::Booting | S::LaunchTimeout, E::Launched) => S::Active,
        // An agent restarted on its own says `launched` again; it is welcome.
        (S::Active | S::Expiring | S::Unhealthy, E::Launched) => from,
        (S::Active | S::Expiring, E::Heartbeat) => from,
        (S::Unhealthy, E::Heartbeat) => S::Active,
        (
            S::Booting
            | S::Active
            | S::Expiring
            | S::Unhealthy
            | S::Stopping
            | S::StopUnconfirmed
            | S::LaunchTimeout,
            E::StoppedCallback,
        ) => S::Stopped,

        (S::Active, E::ExpiryWarning) => S::Expiring,
        (S::Active | S::Expiring | S::Unhealthy | S::Suspended, E::Expired) => S::Stopping,
        (S::Booting, E::LaunchTimedOut) => S::LaunchTimeout,
        (S::Active | S::Expiring, E::HeartbeatsMissed) => S::Unhealthy,
        (S::Stopping, E::StopTimedOut) => S::StopUnconfirmed,

        (S::Stopped | S::StopUnconfirmed | S::LaunchTimeout | S::Failed, E::Start) => S::Booting,
        (
            S::Booting | S::Active | S::Expiring | S::Unhealthy | S::Suspended | S::LaunchTimeout,
            E::Stop,
        ) => S::Stopping,
        (S::Active | S::Expiring, E::Suspend) => S::Suspended,
        (S::Suspended, E::Resume) => S::Active,
        // Out of the warning window again (the timer warns anew if it is not).
        (S::Expiring, E::Extend) => S::Active,
        (S::Active | S::Unhealthy | S::Suspended, E::Extend) => from,
        (S::Active | S::Expiring | S::Unhealthy, E::RotateCertificate) => from,
        (S::Deleted, E::Destroy | E::Destroyed) => return None,
        (_, E::Destroy) => from,
        (_, E::Destroyed) => S::Deleted,
        _ => return None,
    };
    Some(to)
}

/// The appliance facts the timers look at (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub state: State,
    pub state_since: i64,
    pub expires_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub cert_not_after: Option<i64>,
}

/// Timer settings (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub warning_before: i64,
    pub launch_timeout: i64,
    pub heartbeat_interval: i64,
    pub missed_heartbeats: i64,
    pub stop_timeout: i64,
    pub rotate_before: i64,
}

/// What a timer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Event(Event),
    /// The certificate enters its rotation window.
    Rotate,
}

/// What is due for an appliance at `now`, most important first: expiry beats
/// everything, a warning is only given before expiry.
pub fn due(c: &Clock, now: i64, t: &Timers) -> Option<Due> {
    if c.state.expires()
        && let Some(expires) = c.expires_at
    {
        if now >= expires {
            return Some(Due::Event(Event::Expired));
        }
        if c.state == State::Active && now >= expires - t.warning_before {
            return Some(Due::Event(Event::ExpiryWarning));
        }
    }
    match c.state {
        State::Booting if now >= c.state_since + t.launch_timeout => {
            Some(Due::Event(Event::LaunchTimedOut))
        }
        State::Active | State::Expiring => {
            let last = c.last_heartbeat_at.unwrap_or(c.state_since);
            if now >= last + t.heartbeat_interval * t.missed_heartbeats {
                Some(Due::Event(Event::HeartbeatsMissed))
            } else if c
                .cert_not_after
                .is_some_and(|na| now >= na - t.rotate_before)
            {
                Some(Due::Rotate)
            } else {
                None
            }
        }
        State::Stopping if now >= c.state_since + t.stop_timeout => {
            Some(Due::Event(Event::StopTimedOut))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_path_and_its_refusals() {
        let path = [
            (State::Requested, Event::Provision, State::Provisioning),
            (State::Provisioning, Event::Spawned, State::Booting),
            (State::Booting, Event::Launched, State::Active),
            (State::Active, Event::ExpiryWarning, State::Expiring),
            (State::Expiring, Event::Expired, State::Stopping),
            (State::Stopping, Event::StoppedCallback, State::Stopped),
            (State::Stopped, Event::Destroyed, State::Deleted),
        ];
        for (from, event, to) in path {
            assert_eq!(next(from, event), Some(to), "{from:?} + {event:?}");
        }
        for (from, event) in [
            (State::Active, Event::Start),
            (State::Stopped, Event::Stop),
            (State::Stopped, Event::Heartbeat),
            (State::Deleted, Event::Destroy),
            (State::Deleted, Event::Launched),
            (State::Requested, Event::Launched),
            (State::Booting, Event::Resume),
            (State::Stopped, Event::Extend),
            (State::Booting, Event::RotateCertificate),
        ] {
            assert_eq!(
                next(from, event),
                None,
                "{from:?} + {event:?} must be refused"
            );
        }
        assert_eq!(
            next(State::Unhealthy, Event::Heartbeat),
            Some(State::Active)
        );
        assert_eq!(next(State::Active, Event::Heartbeat), Some(State::Active));
        for s in ALL_STATES {
            assert_eq!(State::parse(s.as_str()), Some(s));
            // Destroy is possible from everywhere but the end.
            assert_eq!(next(s, Event::Destroy).is_some(), s != State::Deleted);
        }
    }

    fn timers() -> Timers {
        Timers {
            warning_before: 300,
            launch_timeout: 600,
            heartbeat_interval: 30,
            missed_heartbeats: 3,
            stop_timeout: 60,
            rotate_before: 14 * 86400,
        }
    }

    #[test]
    fn timers_decide_by_state_and_clock() {
        let t = timers();
        let active = Clock {
            state: State::Active,
            state_since: 1000,
            expires_at: Some(1000 + 3600),
            last_heartbeat_at: Some(1000),
            cert_not_after: Some(1000 + 30 * 86400),
        };
        assert_eq!(due(&active, 1050, &t), None);
        assert_eq!(
            due(&active, 1091, &t),
            Some(Due::Event(Event::HeartbeatsMissed))
        );
        let fresh = Clock {
            last_heartbeat_at: Some(4300),
            ..active
        };
        assert_eq!(
            due(&fresh, 4300, &t),
            Some(Due::Event(Event::ExpiryWarning))
        );
        assert_eq!(due(&fresh, 4600, &t), Some(Due::Event(Event::Expired)));
        let expiring = Clock {
            state: State::Expiring,
            ..fresh
        };
        assert_eq!(due(&expiring, 4310, &t), None, "warned once");
        let booting = Clock {
            state: State::Booting,
            expires_at: None,
            ..active
        };
        assert_eq!(due(&booting, 1599, &t), None);
        assert_eq!(
            due(&booting, 1600, &t),
            Some(Due::Event(Event::LaunchTimedOut))
        );
        let stopping = Clock {
            state: State::Stopping,
            ..booting
        };
        assert_eq!(
            due(&stopping, 1060, &t),
            Some(Due::Event(Event::StopTimedOut))
        );
        let old_cert = Clock {
            cert_not_after: Some(1000 + 10 * 86400),
            last_heartbeat_at: Some(1040),
            ..active
        };
        assert_eq!(due(&old_cert, 1050, &t), Some(Due::Rotate));
        let suspended = Clock {
            state: State::Suspended,
            last_heartbeat_at: None,
            ..active
        };
        assert_eq!(due(&suspended, 2000, &t), None, "no heartbeats expected");
        assert_eq!(due(&suspended, 4600, &t), Some(Due::Event(Event::Expired)));
    }
}
