//! An appliance "built elsewhere" for black-box tests: the real agent binary with its
//! own state directory, enrolled by the command its controller gave.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{bin, free_port, kill_processes_with, wait_listening};

/// An appliance "built elsewhere": its own state directory, enrolled by the command
/// the controller gave.
pub struct Machine {
    pub child: Option<Child>,
    pub dir: TempDir,
    pub listen: SocketAddr,
}

impl Machine {
    pub fn new(net: u8, host: u8) -> Machine {
        Machine {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            listen: format!("127.0.{net}.{host}:{}", free_port())
                .parse()
                .unwrap(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Runs `applianced agent` with `args`, its listening address and its directories.
    pub fn run(&mut self, args: &[&str]) {
        let listen = self.listen.to_string();
        let mut args = args.to_vec();
        args.extend(["--listen", &listen]);
        self.spawn(&args);
    }

    /// Runs a command line as a machine's boot would (`applianced agent ...`, as
    /// written), only its `--listen` address swapped for this machine's and its
    /// directories added.
    pub fn boot(&mut self, command: &str) {
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(&words[..2], ["applianced", "agent"], "{command}");
        let listen = self.listen.to_string();
        let at = words
            .iter()
            .position(|w| *w == "--listen")
            .unwrap_or_else(|| panic!("no --listen in {command}"));
        let mut args = words[2..].to_vec();
        args[at - 1] = &listen;
        self.spawn(&args);
    }

    fn spawn(&mut self, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(bin())
            .arg("agent")
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Runs the enrolment command an admin was given.
    pub fn enrol(&mut self, command: &str, extra: &[&str]) {
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(&words[..3], ["applianced", "agent", "--enrol"], "{command}");
        let mut args: Vec<&str> = words[2..].to_vec();
        args.extend_from_slice(extra);
        self.run(&args);
    }

    pub fn wait_serving(&mut self) {
        let log = self.log();
        wait_listening(self.child.as_mut().unwrap(), self.listen, &log);
    }

    /// Waits for the agent to exit; its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the agent did not exit: {}", self.log_text());
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
        kill_processes_with(&self.dir.path().display().to_string());
    }
}
