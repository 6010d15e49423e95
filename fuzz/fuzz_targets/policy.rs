//! The directive policy: any configuration text gives a verdict, never a panic; a
//! refusal names at least one line; and no haproxy configuration the policy accepts
//! starts a line with a refused keyword, however its words are separated.
#![no_main]

use std::path::Path;

use applianced::agent::policy::{Lexical, Policy, Scope};
use libfuzzer_sys::fuzz_target;

/// Keywords the default policy refuses wherever they appear.
const REFUSED: &[&str] = &[
    "chroot",
    "setcap",
    "external-check",
    "lua-load",
    "lua-load-per-thread",
    "lua-prepend-path",
    "setenv",
    "presetenv",
    "resetenv",
    "insecure-fork-wanted",
    "insecure-setuid-wanted",
    "ssl-engine",
    "module-load",
    "program",
];

/// C's isspace(), which is where haproxy splits words.
fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dirs = [
        Path::new("/var/lib/applianced/instances/x"),
        Path::new("/run/applianced/x"),
    ];
    let scope = Scope::new(&dirs, &Lexical);
    let policy = Policy::default();
    let haproxy = policy.check_haproxy(text, &scope);
    if let Err(violations) = &haproxy {
        assert!(!violations.is_empty());
    }
    if let Err(violations) = policy.check_stunnel(text, &scope) {
        assert!(!violations.is_empty());
    }
    if haproxy.is_ok() {
        for line in text.lines() {
            let first = line
                .as_bytes()
                .split(|b| c_space(*b))
                .find(|w| !w.is_empty())
                .unwrap_or_default();
            assert!(
                !REFUSED.iter().any(|k| k.as_bytes() == first),
                "accepted: {line:?}"
            );
        }
    }
});
