//! A small client of the EC2 Query API: form-encoded `POST`s signed with Signature
//! Version 4 (by AWS's own `aws-sigv4`), XML answers read with `roxmltree`. Only the
//! calls the backend makes, against any EC2-compatible endpoint.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};

use super::credentials::{self, Credentials};
use crate::transport::client::{Client, ClientError};

/// The API version every call names.
const VERSION: &str = "2016-11-15";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// No credentials to sign with.
    #[error("{0}")]
    Credentials(String),
    /// The endpoint did not answer.
    #[error("the EC2 endpoint: {0}")]
    Transport(#[from] ClientError),
    /// The cloud answered with an error.
    #[error("EC2 {action}: {code}: {message}")]
    Api {
        action: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The configuration does not fit the cloud (a region it does not have).
    #[error("{0}")]
    Config(String),
    /// An answer that is not what the API returns.
    #[error("EC2 {0}: an answer that cannot be read: {1}")]
    Malformed(String, String),
}

/// What kind of failure, for the status it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The cloud has no room (capacity, a quota, throttling): try later (503).
    NoCapacity,
    /// Anything else the cloud refused or failed at (502).
    Failed,
    /// The named resource does not exist.
    NotFound,
}

impl Ec2Error {
    pub fn failure(&self) -> Failure {
        match self {
            Ec2Error::Api { code, .. } => classify(code),
            Ec2Error::Credentials(_)
            | Ec2Error::Transport(_)
            | Ec2Error::Config(_)
            | Ec2Error::Malformed(..) => Failure::Failed,
        }
    }
}

/// EC2's error codes by what they mean to the caller.
pub fn classify(code: &str) -> Failure {
    match code {
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "ResourceLimitExceeded"
        | "KeyPairLimitExceeded"
        | "RequestLimitExceeded"
        | "Throttling"
        | "Unavailable"
        | "ServiceUnavailable"
        | "InsufficientAddressCapacity"
        | "InsufficientFreeAddressesInSubnet" => Failure::NoCapacity,
        // An answer without EC2's error document: by its status.
        "HTTP429" | "HTTP503" => Failure::NoCapacity,
        c if c.ends_with(".NotFound") => Failure::NotFound,
        _ => Failure::Failed,
    }
}

/// A cloud's message without what names the account: ARNs and 12-digit account ids
/// become `…`, an encoded authorization message (which can hold the policy and the
/// principal) is cut off.
pub fn redact(message: &str) -> String {
    let message = match message.find("Encoded authorization failure message") {
        Some(at) => format!("{}(encoded authorization details omitted)", &message[..at]),
        None => message.to_string(),
    };
    message
        .split_inclusive(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == ',')
        .map(|word| {
            let (body, end) = word
                .char_indices()
                .last()
                .filter(|(_, c)| c.is_whitespace() || *c == '\'' || *c == '"' || *c == ',')
                .map_or((word, ""), |(i, _)| (&word[..i], &word[i..]));
            let digits = body.trim_end_matches(['.', ':', ';', ')']);
            if body.starts_with("arn:") {
                format!("…{end}")
            } else if digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()) {
                format!("…{}{end}", &body[digits.len()..])
            } else {
                word.to_string()
            }
        })
        .collect()
}

pub struct Ec2Client {
    pub endpoint: String,
    pub region: String,
    pub profile: Option<String>,
    pub credentials_file: Option<std::path::PathBuf>,
    pub http: Client,
}

/// Longest a call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Ec2Client {
    /// Calls `action` with `params`; the answer's XML text.
    pub async fn call(
        &self,
        action: &str,
        params: &[(String, String)],
    ) -> Result<String, Ec2Error> {
        // Files are read off the runtime's threads.
        let (profile, file) = (self.profile.clone(), self.credentials_file.clone());
        let creds = tokio::task::spawn_blocking(move || {
            credentials::load(profile.as_deref(), file.as_deref(), &|k| {
                std::env::var(k).ok()
            })
        })
        .await
        .map_err(|e| Ec2Error::Credentials(e.to_string()))?
        .map_err(Ec2Error::Credentials)?;
        let body = form(action, params);
        let headers = self.sign(&creds, &body)?;
        let reply = self
            .http
            .send(Method::POST, &self.endpoint, headers, Bytes::from(body))
            .await?;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        if reply.status.is_success() {
            return Ok(text);
        }
        let (code, message) = error_of(&text).unwrap_or_else(|| {
            (
                format!("HTTP{}", reply.status.as_u16()),
                text.chars().take(300).collect(),
            )
        });
        Err(Ec2Error::Api {
            action: action.to_string(),
            status: reply.status.as_u16(),
            code,
            message,
        })
    }

    /// The headers of a signed request with this body.
    fn sign(&self, creds: &Credentials, body: &str) -> Result<HeaderMap, Ec2Error> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        use aws_sigv4::sign::v4;
        let identity = aws_credential_types::Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.as_str(),
            creds.session_token.as_ref().map(|t| t.to_string()),
            None,
            "applianced",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Ec2Error::Credentials(format!("cannot sign: {e}")))?
            .into();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let signable = SignableRequest::new(
            "POST",
            &self.endpoint,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| Ec2Error::Credentials(format!("cannot sign: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Ec2Error::Credentials(format!("cannot sign: {e}")))?
            .into_parts();
        let mut request = http::Request::builder()
            .method(Method::POST)
            .uri(&self.endpoint)
            .header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
            .body(())
            .map_err(|e| Ec2Error::Credentials(format!("endpoint: {e}")))?;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request.into_parts().0.headers)
    }
}

/// The form body of a call.
pub fn form(action: &str, params: &[(String, String)]) -> String {
    let mut f = form_urlencoded::Serializer::new(String::new());
    f.append_pair("Action", action)
        .append_pair("Version", VERSION);
    for (k, v) in params {
        f.append_pair(k, v);
    }
    f.finish()
}

/// The code and message of an EC2 error answer
/// (`<Response><Errors><Error><Code>…</Code><Message>…`).
pub fn error_of(xml: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let error = doc.descendants().find(|n| n.has_tag_name("Error"))?;
    Some((
        child_text(error, "Code")?.to_string(),
        child_text(error, "Message").unwrap_or_default().to_string(),
    ))
}

/// The text of `node`'s child named `name`.
pub fn child_text<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.tag_name().name() == name)
        .and_then(|c| c.text())
}

/// The `item`s of every set named `set` in the document (`instancesSet`, `imagesSet`, ...).
pub fn items<'a, 'i>(doc: &'a roxmltree::Document<'i>, set: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    doc.descendants()
        .filter(|n| n.tag_name().name() == set)
        .flat_map(|s| s.children().filter(|c| c.tag_name().name() == "item"))
        .collect()
}

/// A node's tags (`tagSet`) as key and value.
pub fn tags(node: roxmltree::Node<'_, '_>) -> Vec<(String, String)> {
    node.children()
        .filter(|c| c.tag_name().name() == "tagSet")
        .flat_map(|s| s.children().filter(|c| c.tag_name().name() == "item"))
        .filter_map(|t| {
            Some((
                child_text(t, "key")?.to_string(),
                child_text(t, "value").unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

pub fn parse<'x>(action: &str, xml: &'x str) -> Result<roxmltree::Document<'x>, Ec2Error> {
    roxmltree::Document::parse(xml).map_err(|e| Ec2Error::Malformed(action.into(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_and_classified() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>InvalidAMIID.NotFound</Code><Message>The image id '[ami-1]' does not exist</Message></Error></Errors><RequestID>r</RequestID></Response>"#;
        let (code, message) = error_of(xml).unwrap();
        assert_eq!(code, "InvalidAMIID.NotFound");
        assert!(message.contains("ami-1"));
        assert_eq!(classify(&code), Failure::NotFound);
        assert_eq!(
            classify("InsufficientInstanceCapacity"),
            Failure::NoCapacity
        );
        assert_eq!(classify("InstanceLimitExceeded"), Failure::NoCapacity);
        assert_eq!(classify("AuthFailure"), Failure::Failed);
        assert_eq!(classify("UnauthorizedOperation"), Failure::Failed);
        assert!(error_of("not xml").is_none());
        assert_eq!(classify("HTTP503"), Failure::NoCapacity);
        assert_eq!(classify("HTTP500"), Failure::Failed);
    }

    #[test]
    fn messages_shown_to_tenants_name_no_account() {
        assert_eq!(
            redact(
                "EC2 RunInstances: UnauthorizedOperation: You are not authorized. Encoded \
                 authorization failure message: AbCdEf123"
            ),
            "EC2 RunInstances: UnauthorizedOperation: You are not authorized. \
             (encoded authorization details omitted)"
        );
        assert_eq!(
            redact(
                "User: arn:aws:iam::123456789012:user/x is not authorized, account 123456789012."
            ),
            "User: … is not authorized, account ….",
        );
        let plain =
            "EC2 RunInstances: InvalidAMIID.NotFound: The image id '[ami-1]' does not exist";
        assert_eq!(redact(plain), plain);
    }

    #[test]
    fn sets_and_tags() {
        let xml = r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<reservationSet><item><instancesSet>
<item><instanceId>i-1</instanceId><instanceState><name>running</name></instanceState>
<tagSet><item><key>Name</key><value>a</value></item></tagSet></item>
<item><instanceId>i-2</instanceId></item>
</instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        let doc = parse("DescribeInstances", xml).unwrap();
        let found = items(&doc, "instancesSet");
        assert_eq!(found.len(), 2);
        assert_eq!(child_text(found[0], "instanceId"), Some("i-1"));
        assert_eq!(tags(found[0]), vec![("Name".into(), "a".into())]);
        assert!(tags(found[1]).is_empty());
    }

    #[test]
    fn requests_are_signed_for_the_region_and_the_ec2_service() {
        let client = Ec2Client {
            endpoint: "https://ec2.eu-west-1.amazonaws.com/".into(),
            region: "eu-west-1".into(),
            profile: None,
            credentials_file: None,
            http: Client::new(None, CALL_TIMEOUT),
        };
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: zeroize::Zeroizing::new("secret".into()),
            session_token: Some(zeroize::Zeroizing::new("session".into())),
        };
        let h = client.sign(&creds, &form("DescribeRegions", &[])).unwrap();
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/ec2/aws4_request"), "{auth}");
        assert!(auth.contains("SignedHeaders=content-type;host;"), "{auth}");
        assert!(!auth.contains("secret"));
        assert!(h.contains_key("x-amz-date"));
        assert_eq!(h["x-amz-security-token"], "session");
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/x-www-form-urlencoded")
        );
    }

    #[test]
    fn the_form_names_the_action_and_version_and_escapes_values() {
        let body = form(
            "RunInstances",
            &[
                ("UserData".into(), "a+b/c=".into()),
                ("Tag.1.Value".into(), "x y&z".into()),
            ],
        );
        assert_eq!(
            body,
            "Action=RunInstances&Version=2016-11-15&UserData=a%2Bb%2Fc%3D&Tag.1.Value=x+y%26z"
        );
    }
}
