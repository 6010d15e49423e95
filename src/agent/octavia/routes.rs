//! Octavia's amphora API 1.0: a pure function from method and path to a [`Route`].
//!
//! ```text
//! GET    //  (and / through the native root)               VersionDiscovery
//! PUT    /1.0/loadbalancer/:amphora_id/:lb_id/haproxy      PutHaproxy
//! GET    /1.0/loadbalancer/:lb_id/haproxy                  GetHaproxy
//! PUT    /1.0/loadbalancer/:lb_id/:action                  Action (start, stop, reload)
//! GET    /1.0/listeners                                    Listeners
//! DELETE /1.0/listeners/:lb_id                             DeleteLoadBalancer
//! PUT|GET|DELETE /1.0/loadbalancer/:lb_id/certificates/:filename
//! PUT    /1.0/certificate                                  PutAgentCertificate
//! PUT    /1.0/config                                       PutConfig
//! GET    /1.0/info, /1.0/details                           Info, Details
//! POST   /1.0/plug/vip/:vip, /1.0/plug/network             VmOnly (plugging)
//! GET    /1.0/interface/:ip, PUT /1.0/interface/:ip/rules  VmOnly (interfaces)
//! PUT    /1.0/vrrp/upload, /1.0/vrrp/:action               VmOnly (VRRP)
//! PUT|GET /1.0/listeners/[:amphora_id/]:id/udp_listener    VmOnly (UDP/SCTP)
//! ```
//! Ids stay strings here: what an unknown or malformed one answers depends on the route
//! (Octavia answers 404 for a load balancer it does not know).

use http::Method;

/// The prefix of every API 1.0 route.
pub const PREFIX: &str = "/1.0";

/// Whether a path belongs to Octavia's API rather than the native one.
pub fn claims(path: &str) -> bool {
    path == "//" || path == PREFIX || path.starts_with("/1.0/")
}

/// A verb on a certificate-directory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileVerb {
    Put,
    Get,
    Delete,
}

/// What a VM-only route would do on an amphora.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOnly {
    PlugVip,
    PlugNetwork,
    GetInterface,
    InterfaceRules,
    VrrpUpload,
    VrrpAction,
    UdpListener,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    VersionDiscovery,
    PutHaproxy {
        amphora_id: String,
        lb_id: String,
    },
    GetHaproxy {
        lb_id: String,
    },
    Action {
        lb_id: String,
        action: String,
    },
    Listeners,
    DeleteLoadBalancer {
        lb_id: String,
    },
    CertificateFile {
        verb: FileVerb,
        lb_id: String,
        filename: String,
    },
    PutAgentCertificate,
    PutConfig,
    Info,
    Details,
    VmOnly(VmOnly),
}

/// Why nothing matched, in Flask's terms (Octavia's agent answers both in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    MethodNotAllowed,
}

impl Route {
    /// The route's template, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::VersionDiscovery => "//",
            Route::PutHaproxy { .. } => "/1.0/loadbalancer/:amphora_id/:lb_id/haproxy",
            Route::GetHaproxy { .. } => "/1.0/loadbalancer/:lb_id/haproxy",
            Route::Action { .. } => "/1.0/loadbalancer/:lb_id/:action",
            Route::Listeners => "/1.0/listeners",
            Route::DeleteLoadBalancer { .. } => "/1.0/listeners/:lb_id",
            Route::CertificateFile { .. } => "/1.0/loadbalancer/:lb_id/certificates/:filename",
            Route::PutAgentCertificate => "/1.0/certificate",
            Route::PutConfig => "/1.0/config",
            Route::Info => "/1.0/info",
            Route::Details => "/1.0/details",
            Route::VmOnly(VmOnly::PlugVip) => "/1.0/plug/vip/:vip",
            Route::VmOnly(VmOnly::PlugNetwork) => "/1.0/plug/network",
            Route::VmOnly(VmOnly::GetInterface) => "/1.0/interface/:ip",
            Route::VmOnly(VmOnly::InterfaceRules) => "/1.0/interface/:ip/rules",
            Route::VmOnly(VmOnly::VrrpUpload) => "/1.0/vrrp/upload",
            Route::VmOnly(VmOnly::VrrpAction) => "/1.0/vrrp/:action",
            Route::VmOnly(VmOnly::UdpListener) => "/1.0/listeners/:id/udp_listener",
        }
    }
}

/// Maps a request line to a route. Like Flask, a path that matches with another method
/// is 405, one that matches nothing 404.
pub fn parse(method: &Method, path: &str) -> Result<Route, RouteError> {
    if path == "//" {
        return match *method == Method::GET || *method == Method::HEAD {
            true => Ok(Route::VersionDiscovery),
            false => Err(RouteError::MethodNotAllowed),
        };
    }
    let Some(rest) = path.strip_prefix("/1.0/") else {
        return Err(RouteError::NotFound);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(RouteError::NotFound);
    }
    let s = |x: &str| x.to_string();
    let m = method.clone();
    let get = m == Method::GET || m == Method::HEAD;
    // (the route when the method fits, whether the method fits)
    let found: Option<(Route, bool)> = match segments.as_slice() {
        ["loadbalancer", amp, lb, "haproxy"] => Some((
            Route::PutHaproxy {
                amphora_id: s(amp),
                lb_id: s(lb),
            },
            m == Method::PUT,
        )),
        ["loadbalancer", lb, "haproxy"] if get => Some((Route::GetHaproxy { lb_id: s(lb) }, true)),
        ["loadbalancer", lb, action] => Some((
            Route::Action {
                lb_id: s(lb),
                action: s(action),
            },
            m == Method::PUT,
        )),
        ["loadbalancer", lb, "certificates", name] => {
            let verb = match m {
                Method::PUT => Some(FileVerb::Put),
                Method::DELETE => Some(FileVerb::Delete),
                _ if get => Some(FileVerb::Get),
                _ => None,
            };
            Some((
                Route::CertificateFile {
                    verb: verb.unwrap_or(FileVerb::Get),
                    lb_id: s(lb),
                    filename: s(name),
                },
                verb.is_some(),
            ))
        }
        ["listeners"] => Some((Route::Listeners, get)),
        ["listeners", lb] => Some((
            Route::DeleteLoadBalancer { lb_id: s(lb) },
            m == Method::DELETE,
        )),
        ["listeners", _, "udp_listener"] => Some((Route::VmOnly(VmOnly::UdpListener), get)),
        ["listeners", _, _, "udp_listener"] => {
            Some((Route::VmOnly(VmOnly::UdpListener), m == Method::PUT))
        }
        ["certificate"] => Some((Route::PutAgentCertificate, m == Method::PUT)),
        ["config"] => Some((Route::PutConfig, m == Method::PUT)),
        ["info"] => Some((Route::Info, get)),
        ["details"] => Some((Route::Details, get)),
        ["plug", "vip", _] => Some((Route::VmOnly(VmOnly::PlugVip), m == Method::POST)),
        ["plug", "network"] => Some((Route::VmOnly(VmOnly::PlugNetwork), m == Method::POST)),
        ["interface", _] => Some((Route::VmOnly(VmOnly::GetInterface), get)),
        ["interface", _, "rules"] => {
            Some((Route::VmOnly(VmOnly::InterfaceRules), m == Method::PUT))
        }
        ["vrrp", "upload"] => Some((Route::VmOnly(VmOnly::VrrpUpload), m == Method::PUT)),
        ["vrrp", _] => Some((Route::VmOnly(VmOnly::VrrpAction), m == Method::PUT)),
        _ => None,
    };
    match found {
        Some((route, true)) => Ok(route),
        Some((_, false)) => Err(RouteError::MethodNotAllowed),
        None => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: &str = "6f6c36b1-0a4b-4b6a-9d42-1f0c5ad1c7e9";

    #[test]
    fn octavia_client_paths() {
        assert!(claims("//") && claims("/1.0/info") && claims("/1.0"));
        assert!(!claims("/") && !claims("/status") && !claims("/1.00/x"));
        assert_eq!(parse(&Method::GET, "//"), Ok(Route::VersionDiscovery));
        assert_eq!(
            parse(
                &Method::PUT,
                &format!("/1.0/loadbalancer/amp-1/{LB}/haproxy")
            ),
            Ok(Route::PutHaproxy {
                amphora_id: "amp-1".into(),
                lb_id: LB.into()
            })
        );
        assert_eq!(
            parse(&Method::GET, &format!("/1.0/loadbalancer/{LB}/haproxy")),
            Ok(Route::GetHaproxy { lb_id: LB.into() })
        );
        assert_eq!(
            parse(&Method::PUT, &format!("/1.0/loadbalancer/{LB}/reload")),
            Ok(Route::Action {
                lb_id: LB.into(),
                action: "reload".into()
            })
        );
        assert_eq!(
            parse(
                &Method::GET,
                &format!("/1.0/loadbalancer/{LB}/certificates/a.pem")
            ),
            Ok(Route::CertificateFile {
                verb: FileVerb::Get,
                lb_id: LB.into(),
                filename: "a.pem".into()
            })
        );
        assert_eq!(
            parse(&Method::DELETE, &format!("/1.0/listeners/{LB}")),
            Ok(Route::DeleteLoadBalancer { lb_id: LB.into() })
        );
        for (m, p, r) in [
            (Method::GET, "/1.0/listeners", Route::Listeners),
            (Method::PUT, "/1.0/certificate", Route::PutAgentCertificate),
            (Method::PUT, "/1.0/config", Route::PutConfig),
            (Method::GET, "/1.0/info", Route::Info),
            (Method::GET, "/1.0/details", Route::Details),
            (
                Method::POST,
                "/1.0/plug/vip/10.0.0.5",
                Route::VmOnly(VmOnly::PlugVip),
            ),
            (
                Method::POST,
                "/1.0/plug/network",
                Route::VmOnly(VmOnly::PlugNetwork),
            ),
            (
                Method::GET,
                "/1.0/interface/10.0.0.5",
                Route::VmOnly(VmOnly::GetInterface),
            ),
            (
                Method::PUT,
                "/1.0/interface/10.0.0.5/rules",
                Route::VmOnly(VmOnly::InterfaceRules),
            ),
            (
                Method::PUT,
                "/1.0/vrrp/upload",
                Route::VmOnly(VmOnly::VrrpUpload),
            ),
            (
                Method::PUT,
                "/1.0/vrrp/start",
                Route::VmOnly(VmOnly::VrrpAction),
            ),
            (
                Method::PUT,
                "/1.0/listeners/amp/l/udp_listener",
                Route::VmOnly(VmOnly::UdpListener),
            ),
        ] {
            assert_eq!(parse(&m, p), Ok(r), "{m} {p}");
        }
    }

    #[test]
    fn not_found_and_not_allowed() {
        for p in [
            "/1.0/",
            "/1.0/nope",
            "/1.0/loadbalancer",
            "/1.0/info/x",
            "/1.0//info",
            "/2.0/info",
        ] {
            assert_eq!(parse(&Method::GET, p), Err(RouteError::NotFound), "{p}");
        }
        for (m, p) in [
            (Method::POST, "//"),
            (Method::POST, "/1.0/info"),
            (Method::GET, "/1.0/config"),
            (Method::DELETE, "/1.0/listeners"),
            (Method::GET, &format!("/1.0/listeners/{LB}") as &str),
            (
                Method::POST,
                &format!("/1.0/loadbalancer/{LB}/certificates/a.pem"),
            ),
            (Method::GET, &format!("/1.0/loadbalancer/amp/{LB}/haproxy")),
        ] {
            assert_eq!(parse(&m, p), Err(RouteError::MethodNotAllowed), "{m} {p}");
        }
    }
}
