//! Logging: to journald (structured fields) when systemd started us, to stderr otherwise.
//! The level comes from `RUST_LOG` when set, else from the configuration, else `info`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the background log writer alive; dropping it flushes what is queued.
pub struct LogGuard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
/// Hold the returned guard until the process ends.
pub fn init(config_level: Option<&str>) -> LogGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| config_level.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    // systemd sets JOURNAL_STREAM when stdout/stderr go to the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .try_init();
        return LogGuard { _worker: None };
    }
    // One log line per request: written by a background thread, so that no request
    // waits on a contended stderr. Lines are never dropped (a full queue applies
    // back-pressure). The thread flushes whenever its queue drains, so buffering only
    // batches the writes of a burst into fewer system calls; it never delays a line.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(16 * 1024)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    LogGuard {
        _worker: Some(guard),
    }
}
