//! Micro-benchmark: the cost of validating one certificate bundle upload (parse PEM,
//! parse X.509, prove the key matches, check the chain order and the file name), for
//! ECDSA P-256 and RSA 2048 bundles. `cargo run --release --example validate_bundle`.

use std::time::Instant;

use applianced::agent::bundle;
use applianced::pki::{Ca, IssueRequest, KeyType};

fn main() {
    let dir = tempfile_dir();
    let ca = Ca::init(&dir, "bench CA", 10, KeyType::EcdsaP256).expect("CA");
    let mut results = Vec::new();
    for (label, key_type) in [
        ("ecdsa-p256", KeyType::EcdsaP256),
        ("rsa2048", KeyType::Rsa2048),
    ] {
        let issued = ca
            .issue(&IssueRequest {
                key_type,
                ..IssueRequest::server("bench.example")
            })
            .expect("issue");
        let body = format!("{}{}", issued.key_pem, issued.chain_pem());
        let now = applianced::certs::now_unix();
        let iterations = 2000;
        for _ in 0..100 {
            bundle::validate("bench.example.pem", body.as_bytes(), true, now).expect("valid");
        }
        let start = Instant::now();
        for _ in 0..iterations {
            bundle::validate("bench.example.pem", body.as_bytes(), true, now).expect("valid");
        }
        let micros = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
        results.push(format!("\"{label}\": {micros:.1}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    // One JSON object: microseconds per validation.
    println!("{{{}}}", results.join(", "));
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("applianced-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
