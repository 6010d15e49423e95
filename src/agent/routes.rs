//! The agent's routes: a pure function from method and path to a [`Route`], one
//! exhaustive match, testable without sockets.
//!
//! ```text
//! GET    /                                   Root
//! GET    /status                             Status
//! GET    /service_status                     ServiceStatus
//! GET    /metrics                            Metrics
//! GET    /instances | /listeners             ListInstances
//! GET    /instances/:id | /listeners/:id     GetInstance
//! DELETE /instances/:id                      DeleteInstance
//! GET|PUT|DELETE /instances/:id/haproxy      File (haproxy.cfg)
//! GET|PUT|DELETE /instances/:id/stunnel      File (stunnel.conf)
//! GET|PUT|DELETE /instances/:id/custom503    File (custom503.http)
//! GET|PUT|DELETE /instances/:id/certificates/:file.pem
//! PUT    /certificate                        PutAgentCertificate
//! ```
//! Every route under `/instances/` is also served under `/listeners/`; the two list
//! routes differ in format (text for `/instances`, JSON for `/listeners`).

use http::Method;

use super::ids::{CertName, InstanceFile, InstanceId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Root,
    Status,
    ServiceStatus,
    Metrics,
    ListInstances { json: bool },
    GetInstance { id: InstanceId, json: bool },
    DeleteInstance { id: InstanceId },
    GetFile { id: InstanceId, file: InstanceFile },
    PutFile { id: InstanceId, file: InstanceFile },
    DeleteFile { id: InstanceId, file: InstanceFile },
    PutAgentCertificate,
}

/// What a request does to an instance file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileVerb {
    Get,
    Put,
    Delete,
}

impl Route {
    /// The route's template, for metrics and logs (bounded cardinality).
    pub fn label(&self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Status => "/status",
            Route::ServiceStatus => "/service_status",
            Route::Metrics => "/metrics",
            Route::ListInstances { json: false } => "/instances",
            Route::ListInstances { json: true } => "/listeners",
            Route::GetInstance { json: false, .. } => "/instances/:id",
            Route::GetInstance { json: true, .. } => "/listeners/:id",
            Route::DeleteInstance { .. } => "/instances/:id",
            Route::GetFile { file, .. }
            | Route::PutFile { file, .. }
            | Route::DeleteFile { file, .. } => match file {
                InstanceFile::Haproxy => "/instances/:id/haproxy",
                InstanceFile::Stunnel => "/instances/:id/stunnel",
                InstanceFile::Custom503 => "/instances/:id/custom503",
                InstanceFile::Certificate(_) => "/instances/:id/certificates/:file",
            },
            Route::PutAgentCertificate => "/certificate",
        }
    }
}

/// Why a request matched no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Not a URL or method this API knows (403, the seed's rule).
    Unknown,
    /// The instance id is not a UUID.
    BadInstanceId(String),
    /// The certificate file name has characters that cannot be a file name here.
    BadFileName(String),
}

/// Maps a request line to a route.
pub fn parse(method: &Method, path: &str) -> Result<Route, RouteError> {
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let get = *method == Method::GET || *method == Method::HEAD;
    let verb = if get {
        Some(FileVerb::Get)
    } else if *method == Method::PUT {
        Some(FileVerb::Put)
    } else if *method == Method::DELETE {
        Some(FileVerb::Delete)
    } else {
        None
    };
    let instance =
        |id: &str| InstanceId::parse(id).ok_or_else(|| RouteError::BadInstanceId(id.to_string()));
    let file_route = |id: &str, file: InstanceFile| {
        let id = instance(id)?;
        Ok(match verb {
            Some(FileVerb::Get) => Route::GetFile { id, file },
            Some(FileVerb::Put) => Route::PutFile { id, file },
            Some(FileVerb::Delete) => Route::DeleteFile { id, file },
            None => return Err(RouteError::Unknown),
        })
    };
    if let ["instances" | "listeners", id, rest @ ..] = segments.as_slice()
        && !rest.is_empty()
        && verb.is_some()
    {
        return match rest {
            ["haproxy"] => file_route(id, InstanceFile::Haproxy),
            ["stunnel"] => file_route(id, InstanceFile::Stunnel),
            ["custom503"] => file_route(id, InstanceFile::Custom503),
            ["certificates", name] => {
                let name = CertName::parse(name)
                    .ok_or_else(|| RouteError::BadFileName((*name).to_string()))?;
                file_route(id, InstanceFile::Certificate(name))
            }
            _ => Err(RouteError::Unknown),
        };
    }
    if let (["instances" | "listeners", id], true) =
        (segments.as_slice(), *method == Method::DELETE)
    {
        return Ok(Route::DeleteInstance { id: instance(id)? });
    }
    match (segments.as_slice(), get) {
        ([""], true) => Ok(Route::Root),
        (["status"], true) => Ok(Route::Status),
        (["service_status"], true) => Ok(Route::ServiceStatus),
        (["metrics"], true) => Ok(Route::Metrics),
        (["certificate"], false) if *method == Method::PUT => Ok(Route::PutAgentCertificate),
        ([kind @ ("instances" | "listeners")], true) => Ok(Route::ListInstances {
            json: *kind == "listeners",
        }),
        ([kind @ ("instances" | "listeners"), id], true) => Ok(Route::GetInstance {
            id: InstanceId::parse(id)
                .ok_or_else(|| RouteError::BadInstanceId((*id).to_string()))?,
            json: *kind == "listeners",
        }),
        _ => Err(RouteError::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7e9f91eb-b3e6-4e3b-a1a7-d6f7fdc1de7c";

    #[test]
    fn known_routes() {
        assert_eq!(parse(&Method::GET, "/"), Ok(Route::Root));
        assert_eq!(parse(&Method::GET, "/status"), Ok(Route::Status));
        assert_eq!(parse(&Method::GET, "/status/"), Ok(Route::Status));
        assert_eq!(parse(&Method::HEAD, "/status"), Ok(Route::Status));
        assert_eq!(
            parse(&Method::GET, "/service_status"),
            Ok(Route::ServiceStatus)
        );
        assert_eq!(parse(&Method::GET, "/metrics"), Ok(Route::Metrics));
        assert_eq!(
            parse(&Method::GET, "/instances"),
            Ok(Route::ListInstances { json: false })
        );
        assert_eq!(
            parse(&Method::GET, "/listeners"),
            Ok(Route::ListInstances { json: true })
        );
        let id = InstanceId::parse(ID).unwrap();
        assert_eq!(
            parse(&Method::GET, &format!("/listeners/{ID}")),
            Ok(Route::GetInstance { id, json: true })
        );
        assert_eq!(
            parse(&Method::PUT, "/certificate"),
            Ok(Route::PutAgentCertificate)
        );
    }

    #[test]
    fn unknown_routes_and_methods() {
        for (m, p) in [
            (Method::POST, "/status"),
            (Method::DELETE, "/"),
            (Method::GET, "/nope"),
            (Method::GET, "//status"),
            (Method::GET, "/status/extra"),
            (Method::GET, "/certificate"),
            (Method::PATCH, "/instances"),
            (Method::GET, "/instances/../../etc/passwd"),
        ] {
            assert_eq!(parse(&m, p), Err(RouteError::Unknown), "{m} {p}");
        }
        assert_eq!(
            parse(&Method::GET, "/instances/..%2f"),
            Err(RouteError::BadInstanceId("..%2f".into()))
        );
    }
}
