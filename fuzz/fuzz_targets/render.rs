//! Configuration rendering: placeholders, the custom 503 insertion, stunnel's checks and
//! the addresses read from it. Any text gives a rendering or a typed refusal, never a
//! panic, and a rendered stunnel configuration always carries the agent's own globals.
#![no_main]

use std::path::Path;

use applianced::agent::render::{self, Placeholders};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = Placeholders {
        my_ip: Some("192.0.2.10".parse().unwrap()),
        certs_dir: Path::new("/var/lib/applianced/instances/x/certificates"),
        custom503: Path::new("/var/lib/applianced/instances/x/custom503.http"),
    };
    let _ = render::render_haproxy(text, &p, false);
    let _ = render::render_haproxy(text, &p, true);
    let pid = Path::new("/run/applianced/x/stunnel.pid");
    if let Ok(rendered) = render::render_stunnel(text, &p, pid, |_| true) {
        assert!(rendered.contains("\nforeground = no\n"), "{rendered}");
        let _ = render::stunnel_accept_addresses(&rendered);
        let _ = render::stunnel_listen_sockets(&rendered);
    }
});
