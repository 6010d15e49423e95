//! The descriptor budget. Every connection holds one descriptor; the process also needs
//! some for its listeners, the runtime, log and files it writes, the daemons it starts
//! (pipes) and, on the controller, its store. At start the soft `RLIMIT_NOFILE` is
//! raised to the hard one, [`RESERVED`] descriptors are kept aside, and the connection
//! cap is clamped to the rest, so idle connections can never starve a write or an
//! accept.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but client connections.
pub const RESERVED: u64 = 64;

/// Raises the soft descriptor limit to the hard one; returns the limit now in force.
pub fn raise_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the descriptor limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptor limit");
            u64::MAX
        }
    }
}

/// The connection cap a descriptor limit allows.
pub fn connection_budget(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(RESERVED)).unwrap_or(usize::MAX)
}

/// `max_connections` clamped to what `limit` allows (at least one), with a warning when
/// it had to be lowered.
pub fn clamp_connections(max_connections: usize, limit: u64) -> usize {
    let budget = connection_budget(limit).max(1);
    if max_connections > budget {
        tracing::warn!(
            max_connections,
            descriptor_limit = limit,
            reserved = RESERVED,
            clamped_to = budget,
            "limits.max_connections is more than the descriptor limit allows; clamped"
        );
        budget
    } else {
        max_connections
    }
}

/// For `config check`: whether `max_connections` fits the hard descriptor limit (which
/// the daemon raises its soft limit to). `Err` says why not.
pub fn check_budget(max_connections: usize) -> Result<(), String> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    let budget = connection_budget(hard);
    if max_connections > budget {
        return Err(format!(
            "{max_connections} connections need {} descriptors with the {RESERVED} kept for files, daemons and the store, but RLIMIT_NOFILE allows {hard} (at most {budget} connections; raise LimitNOFILE= or lower this)",
            max_connections as u64 + RESERVED
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_the_reserve() {
        assert_eq!(connection_budget(1024), 960);
        assert_eq!(connection_budget(10), 0);
        assert_eq!(clamp_connections(1024, 1024), 960);
        assert_eq!(clamp_connections(100, 1024), 100);
        assert_eq!(clamp_connections(100, 10), 1);
        assert!(check_budget(usize::MAX / 2).is_err());
        assert!(check_budget(1).is_ok());
    }
}
