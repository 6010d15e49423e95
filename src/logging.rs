//! Logging: to journald (structured fields) when systemd started us, to stderr otherwise.
//! The level comes from `RUST_LOG` when set, else from the configuration, else `info`.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Weak};

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
        flush_all();
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

// One log line per request, and no writer thread in the request path: a separate writer
// thread had to be woken for nearly every line, which cost more than the write. Instead
// each runtime worker thread collects its lines and writes them with one system call
// whenever it runs out of work ([`worker_parks`], the runtime's park hook) or has
// collected `WORKER_BUFFER` bytes: an idle agent writes each line at once, a busy one in
// batches. A flusher thread also writes whatever every worker holds each `FLUSH_EVERY`,
// so no line waits longer than that for a worker that never runs out of work, and a
// `kill -9` loses at most the lines of that last moment. Exits (the guard) and panics
// (a hook) write everything collected. Other threads, and warnings and errors from any
// thread, are written at once.

const WORKER_BUFFER: usize = 32 * 1024;
/// Longest a collected line waits before it is written.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

type Buffer = Arc<Mutex<Vec<u8>>>;

thread_local! {
    /// `Some` on runtime worker threads (from when they first park).
    static PENDING: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Every worker's buffer, for the flusher and the fatal paths.
static BUFFERS: Mutex<Vec<Weak<Mutex<Vec<u8>>>>> = Mutex::new(Vec::new());

/// Writes `bytes` to stderr (one system call for a short buffer) and empties it.
fn write_out(bytes: &mut Vec<u8>) -> std::io::Result<()> {
    let result = std::io::stderr().lock().write_all(bytes);
    bytes.clear();
    result
}

/// Runs `f` on this thread's collected lines, `None` on threads that do not collect
/// (or whose thread-locals are already gone).
fn with_pending<T>(f: impl FnOnce(&mut Vec<u8>) -> T) -> Option<T> {
    let buffer = PENDING
        .try_with(|p| p.try_borrow().ok().and_then(|p| p.clone()))
        .ok()
        .flatten()?;
    let mut bytes = buffer.lock().unwrap_or_else(|e| e.into_inner());
    Some(f(&mut bytes))
}

/// Writes what every worker has collected into `out` (stderr, or a test's buffer).
fn flush_all_into(out: &mut impl FnMut(&mut Vec<u8>)) {
    let buffers: Vec<Buffer> = {
        let mut all = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|b| b.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    for buffer in buffers {
        let mut bytes = buffer.lock().unwrap_or_else(|e| e.into_inner());
        if !bytes.is_empty() {
            out(&mut bytes);
        }
    }
}

/// Writes what every worker has collected, now (exits, panics).
pub fn flush_all() {
    flush_all_into(&mut |bytes| {
        let _ = write_out(bytes);
    });
}

/// Starts the flusher thread and the panic hook, once.
fn start_flusher() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush_all();
                }
            });
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush_all();
            previous(info);
        }));
    });
}

/// The runtime's park hook: writes what this worker collected, and makes it collect
/// from now on.
pub fn worker_parks() {
    let written = with_pending(|buf| {
        if !buf.is_empty() {
            let _ = write_out(buf);
        }
    });
    if written.is_none() {
        let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(WORKER_BUFFER)));
        let registered = PENDING
            .try_with(|p| {
                p.try_borrow_mut()
                    .map(|mut p| *p = Some(buffer.clone()))
                    .is_ok()
            })
            .unwrap_or(false);
        if registered {
            BUFFERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(&buffer));
            start_flusher();
        }
    }
}

/// The runtime's thread-stop hook: writes what this thread collected, if anything.
pub fn thread_stops() {
    let taken = PENDING
        .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.take()))
        .ok()
        .flatten();
    if let Some(buffer) = taken {
        let mut bytes = buffer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = write_out(&mut bytes);
    }
}

/// The writer of the fmt layer: each event arrives as one `write` of a whole line.
struct Stderr;

/// Writes to stderr now, after whatever this thread collected (keeping the order).
struct Direct;

/// Collects into this thread's buffer when it is a worker, else writes now.
struct Collect;

impl Write for Direct {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        with_pending(|buf| match buf.is_empty() {
            false => write_out(buf),
            true => Ok(()),
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
        let collected = with_pending(|buf| {
            buf.extend_from_slice(line);
            if buf.len() >= WORKER_BUFFER {
                write_out(buf)
            } else {
                Ok(())
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes this thread has collected and not written yet.
    fn pending_len() -> Option<usize> {
        with_pending(|buf| buf.len())
    }

    /// Held by each test here: `flush_all` in one would write what another's worker
    /// holds, doing the flusher's work in its place.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    #[test]
    fn a_busy_workers_lines_are_written_within_the_flush_period() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::spawn(|| {
            worker_parks();
            Collect.write_all(b"busy worker line\n").unwrap();
            assert!(pending_len().is_some(), "a worker collects its lines");
            // Busy: it never parks again, yet its line leaves the buffer.
            let deadline = std::time::Instant::now() + FLUSH_EVERY * 10;
            while pending_len() != Some(0) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a busy worker's line was not written within {:?}",
                    FLUSH_EVERY * 10
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn flush_all_reaches_every_worker() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            worker_parks();
            Collect.write_all(b"line for flush_all\n").unwrap();
            tx.send(()).unwrap();
            let _ = stop_rx.recv();
            pending_len()
        });
        rx.recv().unwrap();
        flush_all();
        stop_tx.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), Some(0));
    }
}
