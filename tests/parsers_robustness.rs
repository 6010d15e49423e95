//! Every parser that takes untrusted input, fed arbitrary and mutated bytes: it may
//! refuse, it must never panic. A fixed-seed generator keeps runs reproducible.

use applianced::agent::{bundle, render, routes};
use applianced::certs;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// `seed` with a few bytes flipped, inserted, removed or truncated.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(8) {
            if v.is_empty() {
                v.push(self.next() as u8);
                continue;
            }
            let at = self.below(v.len());
            match self.below(4) {
                0 => v[at] = self.next() as u8,
                1 => v.insert(at, self.next() as u8),
                2 => {
                    v.remove(at);
                }
                _ => v.truncate(at),
            }
        }
        v
    }
}

fn sample_bundle() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let ca = applianced::pki::Ca::init(
        dir.path(),
        "fuzz CA",
        10,
        applianced::pki::KeyType::EcdsaP256,
    )
    .unwrap();
    let issued = ca
        .issue(&applianced::pki::IssueRequest::server("www.example.com"))
        .unwrap();
    format!("{}{}", issued.key_pem, issued.chain_pem()).into_bytes()
}

#[test]
fn pem_and_bundle_parsers_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let seed = sample_bundle();
    let now = certs::now_unix();
    assert!(bundle::validate("www.example.com.pem", &seed, true, now).is_ok());
    for i in 0..3000 {
        let input = if i % 3 == 0 {
            rng.bytes(512)
        } else {
            rng.mutate(&seed)
        };
        let _ = certs::parse_pem(&input);
        let _ = bundle::validate("www.example.com.pem", &input, true, now);
        if let Ok(b) = certs::parse_pem(&input) {
            for c in &b.certs {
                let _ = certs::CertInfo::parse(c);
            }
        }
    }
}

#[test]
fn route_parser_never_panics_and_only_accepts_safe_names() {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let methods = [
        http::Method::GET,
        http::Method::PUT,
        http::Method::DELETE,
        http::Method::POST,
        http::Method::HEAD,
    ];
    let pieces = [
        "/",
        "instances",
        "listeners",
        "7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7c",
        "certificates",
        "..",
        ".",
        "%2e",
        "a.pem",
        "haproxy",
        "stunnel",
        "custom503",
        "",
        "\u{0}",
        "é",
    ];
    for _ in 0..20000 {
        let mut path = String::new();
        for _ in 0..rng.below(7) {
            path.push_str(pieces[rng.below(pieces.len())]);
            if rng.below(2) == 0 {
                path.push('/');
            }
        }
        let method = &methods[rng.below(methods.len())];
        if let Ok(route) = routes::parse(method, &path) {
            let debug = format!("{route:?}");
            assert!(
                !debug.contains("\"..") && !debug.contains("/.."),
                "{path} -> {debug}"
            );
        }
    }
}

#[test]
fn config_renderers_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0003);
    let certs_dir = std::path::Path::new("/s/certificates");
    let page = std::path::Path::new("/s/custom503.http");
    let p = render::Placeholders {
        my_ip: Some("10.0.0.1".parse().unwrap()),
        certs_dir,
        custom503: page,
    };
    let seed = b"global\n    daemon\ndefaults\n    mode http\nfrontend fe\n    bind {MYIP}:80\n[https]\naccept = 127.0.0.1:443\ncert = {CERTS}/a.pem\n";
    for _ in 0..5000 {
        let input = rng.mutate(seed);
        let text = String::from_utf8_lossy(&input);
        let _ = render::render_haproxy(&text, &p, true);
        let _ = render::render_stunnel(&text, &p, std::path::Path::new("/run/x.pid"), |_| true);
        let _ = render::stunnel_accept_addresses(&text);
        let _ = render::stunnel_listen_sockets(&text);
        let _ = applianced::agent::addresses::haproxy_bind_ips(&text);
        let _ = applianced::config::parse_toml::<applianced::config::agent::AgentConfig>(&text);
    }
}
