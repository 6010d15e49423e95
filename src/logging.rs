//! Logging: to journald (structured fields) when systemd started us, to stderr otherwise.
//! The level comes from `RUST_LOG` when set, else from the configuration, else `info`.

use std::cell::RefCell;
use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Held for the life of the process; dropping it writes what this thread collected.
pub struct LogGuard {
    _private: (),
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush_worker();
    }
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
        return LogGuard { _private: () };
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    LogGuard { _private: () }
}

// One log line per request, and no thread of its own: a separate writer thread had to be
// woken for nearly every line, which cost more than the write. Instead each runtime
// worker thread collects its lines and writes them with one system call whenever it runs
// out of work (`flush_worker`, from the runtime's park hook) or has collected
// `WORKER_BUFFER` bytes: an idle agent writes each line at once, a busy one in batches,
// never holding a line longer than it takes to fill the buffer. Other threads, and
// warnings and errors from any thread, are written at once.

const WORKER_BUFFER: usize = 32 * 1024;

thread_local! {
    /// `Some` on runtime worker threads (set when they first park).
    static PENDING: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Writes what this worker thread has collected; makes it collect from now on. Called
/// by the runtime when a worker parks or stops.
pub fn flush_worker() {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let buf = p.get_or_insert_with(|| Vec::with_capacity(WORKER_BUFFER));
        if !buf.is_empty() {
            let _ = std::io::stderr().lock().write_all(buf);
            buf.clear();
        }
    });
}

/// The writer of the fmt layer: each event arrives as one `write` of a whole line.
struct Stderr;

/// Writes to stderr now, after whatever this thread collected (keeping the order).
struct Direct;

/// Collects into this thread's buffer when it is a worker, else writes now.
struct Collect;

impl Write for Direct {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            let mut err = std::io::stderr().lock();
            if let Some(buf) = p.as_mut().filter(|b| !b.is_empty()) {
                err.write_all(buf)?;
                buf.clear();
            }
            err.write_all(line)?;
            Ok(line.len())
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Write for Collect {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let collected = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            let Some(buf) = p.as_mut() else {
                return Ok(false);
            };
            buf.extend_from_slice(line);
            if buf.len() >= WORKER_BUFFER {
                std::io::stderr().lock().write_all(buf)?;
                buf.clear();
            }
            Ok::<_, std::io::Error>(true)
        })?;
        if !collected {
            std::io::stderr().lock().write_all(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = EitherWriter<Collect, Direct>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::B(Direct)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        if *meta.level() >= tracing::Level::INFO {
            EitherWriter::A(Collect)
        } else {
            EitherWriter::B(Direct)
        }
    }
}
