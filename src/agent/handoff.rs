//! `applianced exec-listening`: binds listening sockets, then execs a program that takes
//! them through the systemd socket-activation protocol (`LISTEN_FDS`, `LISTEN_PID`).
//!
//! stunnel closes and rebinds the sockets it bound itself when it reloads on `SIGHUP`,
//! refusing connections for an instant; sockets it inherited this way it keeps. So the
//! direct service manager starts stunnel through this helper, and a certificate reload
//! drops no connection. `exec` keeps the pid, which is what `LISTEN_PID` must name.

use std::ffi::CString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// The first inherited descriptor in the socket-activation protocol.
const LISTEN_FDS_START: i32 = 3;

/// Binds `addrs` as descriptors 3, 4, ... and execs `program` with `args`. Returns only
/// on failure, with the reason.
pub fn exec_listening(addrs: &[SocketAddr], program: &str, args: &[String]) -> String {
    let mut listeners = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => return format!("cannot listen on {addr}: {e}"),
        };
        // A fresh process holds only 0, 1 and 2, so sockets take the next numbers.
        let expected = LISTEN_FDS_START + i as i32;
        if listener.as_raw_fd() != expected {
            return format!(
                "listening socket for {addr} is descriptor {}, not {expected}",
                listener.as_raw_fd()
            );
        }
        if let Err(e) = fcntl(&listener, FcntlArg::F_SETFD(FdFlag::empty())) {
            return format!("cannot pass the socket for {addr}: {e}");
        }
        listeners.push(listener);
    }
    let to_c = |s: String| CString::new(s).map_err(|e| e.to_string());
    let run = || -> Result<String, String> {
        let program_c = to_c(program.to_string())?;
        let mut argv = vec![program_c.clone()];
        for a in args {
            argv.push(to_c(a.clone())?);
        }
        let mut env: Vec<CString> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("LISTEN_"))
            .map(|(k, v)| to_c(format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        env.push(to_c(format!("LISTEN_FDS={}", listeners.len()))?);
        env.push(to_c(format!("LISTEN_PID={}", std::process::id()))?);
        let err = nix::unistd::execvpe(&program_c, &argv, &env).err();
        Ok(format!(
            "cannot run {program}: {}",
            err.map(|e| e.to_string()).unwrap_or_default()
        ))
    };
    run().unwrap_or_else(|e| e)
}
