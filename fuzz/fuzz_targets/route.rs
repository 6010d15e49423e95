//! The agent's route parser: any method and path give a route or a typed refusal, never
//! a panic; a route's instance id and file name are always well formed.
#![no_main]

use applianced::agent::routes::{self, Route};
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 8] = [
    "GET", "PUT", "DELETE", "POST", "HEAD", "PATCH", "OPTIONS", "X-CUSTOM",
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, path)) = data.split_first() else {
        return;
    };
    let method = http::Method::from_bytes(METHODS[m as usize % METHODS.len()].as_bytes()).unwrap();
    let path = String::from_utf8_lossy(path);
    if let Ok(route) = routes::parse(&method, &path) {
        // Whatever parsed names nothing outside the instance directory.
        let text = format!("{route:?}");
        assert!(!text.contains('/') && !text.contains('\0'), "{text}");
        let _ = Route::label(&route);
    }
});
