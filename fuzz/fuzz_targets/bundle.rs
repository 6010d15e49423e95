//! PEM parsing and certificate bundle validation (instance bundles): any body gives a
//! bundle or a typed refusal, never a panic.
#![no_main]

use applianced::agent::bundle;
use applianced::certs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = certs::parse_pem(data);
    // The first line is the file name, the rest the body.
    let (name, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("www.example.com.pem".to_owned(), data),
    };
    let _ = bundle::validate(&name, body, true, 1_800_000_000);
    let _ = bundle::validate(&name, body, false, 1_800_000_000);
});
