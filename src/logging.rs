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
        thread_stops();
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
// out of work ([`worker_parks`], the runtime's park hook) or has collected
// `WORKER_BUFFER` bytes: an idle agent writes each line at once, a busy one in batches,
// never holding a line longer than it takes to fill the buffer. Other threads, and
// warnings and errors from any thread, are written at once.

const WORKER_BUFFER: usize = 32 * 1024;

thread_local! {
    /// `Some` on runtime worker threads (from when they first park).
    static PENDING: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Writes `bytes` to stderr (one system call for a short buffer) and empties it.
fn write_out(bytes: &mut Vec<u8>) -> std::io::Result<()> {
    let result = std::io::stderr().lock().write_all(bytes);
    bytes.clear();
    result
}

/// Runs `f` on this thread's collected lines, `None` on threads that do not collect
/// (or whose thread-locals are already gone).
fn with_pending<T>(f: impl FnOnce(&mut Option<Vec<u8>>) -> T) -> Option<T> {
    PENDING
        .try_with(|p| p.try_borrow_mut().ok().map(|mut p| f(&mut p)))
        .ok()
        .flatten()
}

/// The runtime's park hook: writes what this worker collected, and makes it collect
/// from now on.
pub fn worker_parks() {
    with_pending(|p| {
        let buf = p.get_or_insert_with(|| Vec::with_capacity(WORKER_BUFFER));
        if !buf.is_empty() {
            let _ = write_out(buf);
        }
    });
}

/// The runtime's thread-stop hook: writes what this thread collected, if anything.
pub fn thread_stops() {
    with_pending(|p| {
        if let Some(mut buf) = p.take() {
            let _ = write_out(&mut buf);
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
        with_pending(|p| match p.as_mut() {
            Some(buf) if !buf.is_empty() => write_out(buf),
            _ => Ok(()),
        })
        .transpose()?;
        std::io::stderr().lock().write_all(line)?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Write for Collect {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let collected = with_pending(|p| {
            let buf = p.as_mut()?;
            buf.extend_from_slice(line);
            Some(if buf.len() >= WORKER_BUFFER {
                write_out(buf)
            } else {
                Ok(())
            })
        })
        .flatten();
        match collected {
            Some(result) => result?,
            None => std::io::stderr().lock().write_all(line)?,
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
