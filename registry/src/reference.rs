//! Image references (`host/repository:tag@digest`) and the naming rules of the registry API.
//!
//! Parsing follows Docker's reference grammar: the first `/`-separated component is a registry host
//! when it contains a `.` or a `:` or is `localhost`; otherwise the image lives on Docker Hub
//! (`docker.io`, with `library/` in front of one-component names). A missing tag means `latest`.

use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;

use regex::Regex;

use crate::Error;

/// The registry Docker uses when an image name has no host.
pub const DEFAULT_HOST: &str = "docker.io";

/// An image reference split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// Registry host with optional port, e.g. `127.0.0.1:5000`.
    pub host: String,
    /// Repository path inside the registry, e.g. `kiln/contexts`.
    pub repository: String,
    /// The tag; `latest` when the reference named neither tag nor digest.
    pub tag: Option<String>,
    /// The manifest digest (`sha256:…`), when the reference pinned one.
    pub digest: Option<String>,
}

impl ImageReference {
    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest,
            (None, Some(tag)) => tag,
            (None, None) => "latest",
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits `127.0.0.1:5000/app:tag` (or `…/app@sha256:…`, or `busybox`) into host, repository, tag and digest.
pub fn parse_image_reference(image: &str) -> Result<ImageReference, Error> {
    let invalid = |reason: &str| Error::InvalidReference {
        reference: image.to_string(),
        reason: reason.to_string(),
    };
    if image.is_empty() {
        return Err(invalid("it is empty"));
    }
    if image.trim() != image || image.chars().any(char::is_whitespace) {
        return Err(invalid("it contains whitespace"));
    }

    let (name_and_tag, digest) = match image.split_once('@') {
        Some((name, digest)) => {
            validate_digest(digest)
                .map_err(|_| invalid("the part after '@' is not a sha256 digest"))?;
            (name, Some(digest.to_string()))
        }
        None => (image, None),
    };

    // A ':' after the last '/' starts the tag; a ':' before it belongs to the host's port.
    let last_slash = name_and_tag.rfind('/');
    let (name, tag) = match name_and_tag.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => (
            &name_and_tag[..colon],
            Some(name_and_tag[colon + 1..].to_string()),
        ),
        _ => (name_and_tag, None),
    };
    if let Some(tag) = &tag {
        if !tag_regex().is_match(tag) {
            return Err(invalid(
                "the tag must be 1 to 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            ));
        }
    }

    let (host, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            validate_host(first).map_err(|err| invalid(&err.to_string()))?;
            (first.to_string(), rest.to_string())
        }
        Some(_) => (DEFAULT_HOST.to_string(), name.to_string()),
        None => (DEFAULT_HOST.to_string(), format!("library/{name}")),
    };
    if repository.is_empty() {
        return Err(invalid("the repository name is missing"));
    }
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid("repository names must be lowercase"));
    }
    validate_repository(&repository).map_err(|err| invalid(&err.to_string()))?;

    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_string()),
        _ => tag,
    };
    Ok(ImageReference {
        host,
        repository,
        tag,
        digest,
    })
}

/// Checks that `digest` is `sha256:` followed by 64 lowercase hex characters.
pub fn validate_digest(digest: &str) -> Result<(), Error> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::InvalidDigest {
            digest: digest.to_string(),
        })
    }
}

/// Checks a repository name against the OCI distribution grammar.
pub fn validate_repository(repository: &str) -> Result<(), Error> {
    if repository.len() <= 255 && repository_regex().is_match(repository) {
        Ok(())
    } else {
        Err(Error::InvalidRepository {
            repository: repository.to_string(),
        })
    }
}

/// Checks a tag against the OCI distribution grammar.
pub(crate) fn is_valid_tag(tag: &str) -> bool {
    tag_regex().is_match(tag)
}

/// Checks a registry host: a DNS name or IPv4 address, or a bracketed IPv6 address, with an optional port.
pub(crate) fn validate_host(host: &str) -> Result<(), Error> {
    let invalid = |reason: &str| Error::InvalidHost {
        host: host.to_string(),
        reason: reason.to_string(),
    };
    if host.is_empty() {
        return Err(invalid("it is empty"));
    }
    if host.contains("://") {
        return Err(invalid(
            "give the host without a scheme, e.g. \"127.0.0.1:5000\" or \"registry.example.com\"",
        ));
    }
    let (name, port) = split_host_port(host);
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(invalid("the port must be a number from 1 to 65535"));
        }
    }
    let is_ipv6 = name.starts_with('[')
        && name.ends_with(']')
        && name[1..name.len() - 1].parse::<IpAddr>().is_ok();
    if is_ipv6 || host_name_regex().is_match(name) {
        Ok(())
    } else {
        Err(invalid(
            "expected a host name or IP address with an optional :port",
        ))
    }
}

/// Whether the registry at `host` is on this machine, so plain HTTP is used.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let (name, _) = split_host_port(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        // [v6]:port
        match host.find(']') {
            Some(end) => {
                let rest = &host[end + 1..];
                (&host[..=end], rest.strip_prefix(':'))
            }
            None => (host, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    }
}

fn repository_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$",
        )
        .expect("static regex is valid")
    })
}

fn tag_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("static regex is valid")
    })
}

fn host_name_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")
            .expect("static regex is valid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(image: &str) -> ImageReference {
        match parse_image_reference(image) {
            Ok(reference) => reference,
            Err(err) => panic!("{image:?} should parse: {err}"),
        }
    }

    #[test]
    fn host_port_repository_tag() {
        let r = parse("127.0.0.1:5000/app:v1");
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.repository, "app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest, None);
        assert_eq!(r.reference(), "v1");
        assert_eq!(r.to_string(), "127.0.0.1:5000/app:v1");
    }

    #[test]
    fn missing_tag_means_latest() {
        let r = parse("localhost:5000/base/busybox");
        assert_eq!(r.host, "localhost:5000");
        assert_eq!(r.repository, "base/busybox");
        assert_eq!(r.reference(), "latest");
    }

    #[test]
    fn digest_reference() {
        let r = parse(&format!("registry.example.com/team/app@{DIGEST}"));
        assert_eq!(r.host, "registry.example.com");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), DIGEST);
    }

    #[test]
    fn tag_and_digest_prefers_digest() {
        let r = parse(&format!("127.0.0.1:5000/app:v2@{DIGEST}"));
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.reference(), DIGEST);
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/app:v2@{DIGEST}"));
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("busybox");
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference()),
            ("docker.io", "library/busybox", "latest")
        );
        let r = parse("library/alpine:3.19");
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference()),
            ("docker.io", "library/alpine", "3.19")
        );
        let r = parse("localhost/app");
        assert_eq!(r.host, "localhost");
    }

    #[test]
    fn ipv6_host() {
        let r = parse("[::1]:5000/app:1");
        assert_eq!(r.host, "[::1]:5000");
        assert!(is_loopback_host(&r.host));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "127.0.0.1:5000/App:v1",
            "127.0.0.1:5000/app:",
            "127.0.0.1:5000/app:-bad",
            "127.0.0.1:5000/app@sha256:short",
            "127.0.0.1:5000/app@md5:0123",
            "127.0.0.1:5000/",
            "127.0.0.1:99999/app",
            "http://127.0.0.1:5000/app",
            "app name",
            "127.0.0.1:5000/a//b",
            "127.0.0.1:5000/a/b/",
        ] {
            assert!(
                parse_image_reference(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_host("127.0.0.1:5000"));
        assert!(is_loopback_host("127.1.2.3"));
        assert!(is_loopback_host("localhost:5000"));
        assert!(is_loopback_host("LOCALHOST"));
        assert!(!is_loopback_host("registry.example.com"));
        assert!(!is_loopback_host("10.0.0.1:5000"));
    }

    #[test]
    fn digest_validation() {
        assert!(validate_digest(DIGEST).is_ok());
        assert!(validate_digest(&DIGEST.to_uppercase()).is_err());
        assert!(validate_digest("sha256:").is_err());
        assert!(validate_digest(&DIGEST.replace("sha256", "sha512")).is_err());
    }

    #[test]
    fn host_validation() {
        assert!(validate_host("127.0.0.1:5000").is_ok());
        assert!(validate_host("registry.example.com").is_ok());
        assert!(validate_host("[::1]:5000").is_ok());
        assert!(validate_host("bad host").is_err());
        assert!(validate_host("host:0").is_err());
        assert!(validate_host("https://registry.example.com").is_err());
    }
}
