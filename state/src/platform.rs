//! Parsing, normalising and matching `os/arch[/variant]` platform strings.

use std::fmt;

use crate::pb::Platform;

/// The operating systems agents can advertise.
const OPERATING_SYSTEMS: &[&str] = &["linux", "windows"];
/// The architectures kiln builds for, with the variants each accepts.
const ARCHITECTURES: &[(&str, &[&str])] = &[
    ("amd64", &[]),
    ("arm64", &["v8"]),
    ("arm", &["v5", "v6", "v7"]),
    ("386", &[]),
];

/// A validated, normalised platform: lower case, with ACR's aliases resolved
/// (`x86_64` → `amd64`, `aarch64` → `arm64`, `arm` without a variant → `arm/v7`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlatformSpec {
    os: String,
    architecture: String,
    variant: String,
}

impl PlatformSpec {
    /// Parses `os[/arch[/variant]]`; an empty string means `linux/amd64`, ACR's default.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(Self::default_linux());
        }
        let lower = trimmed.to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(unknown(text));
        }
        let os = parts[0];
        if !OPERATING_SYSTEMS.contains(&os) {
            return Err(unknown(text));
        }
        let architecture = match parts.get(1).copied().unwrap_or("amd64") {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            "i386" | "x86" => "386",
            other => other,
        };
        let Some((_, variants)) = ARCHITECTURES.iter().find(|(a, _)| *a == architecture) else {
            return Err(unknown(text));
        };
        let variant = match parts.get(2) {
            Some(v) if variants.contains(v) => (*v).to_string(),
            Some(_) => return Err(unknown(text)),
            None if architecture == "arm" => "v7".to_string(),
            None => String::new(),
        };
        if os == "windows" && architecture != "amd64" {
            return Err(format!(
                "unknown platform '{text}': Windows agents build only windows/amd64"
            ));
        }
        Ok(Self {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant,
        })
    }

    /// Normalises a platform record; an empty record means `linux/amd64`.
    pub fn from_pb(platform: Option<&Platform>) -> Result<Self, String> {
        match platform {
            None => Ok(Self::default_linux()),
            Some(p) if p.os.is_empty() && p.architecture.is_empty() => Ok(Self::default_linux()),
            Some(p) => {
                let mut text = format!("{}/{}", p.os, p.architecture);
                if !p.variant.is_empty() {
                    text.push('/');
                    text.push_str(&p.variant);
                }
                Self::parse(&text)
            }
        }
    }

    pub fn default_linux() -> Self {
        Self {
            os: "linux".to_string(),
            architecture: "amd64".to_string(),
            variant: String::new(),
        }
    }

    pub fn os(&self) -> &str {
        &self.os
    }

    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    pub fn variant(&self) -> &str {
        &self.variant
    }

    pub fn to_pb(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }

    /// Whether an agent offering `self` can run work that asks for `wanted`.
    /// An arm64 agent runs `arm64` and `arm64/v8`; an `arm/v7` agent also runs `arm/v6` and `arm/v5`.
    pub fn can_run(&self, wanted: &PlatformSpec) -> bool {
        if self.os != wanted.os || self.architecture != wanted.architecture {
            return false;
        }
        if self.architecture == "arm" {
            return wanted.variant <= self.variant;
        }
        true
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

fn unknown(text: &str) -> String {
    format!(
        "unknown platform '{text}': use os/arch[/variant] with os linux or windows and arch amd64, arm64, arm (v5, v6, v7) or 386, for example linux/arm64"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        assert_eq!(PlatformSpec::parse("").unwrap().to_string(), "linux/amd64");
        assert_eq!(
            PlatformSpec::parse("Linux/ARM").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            PlatformSpec::parse("linux/aarch64").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            PlatformSpec::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            PlatformSpec::parse("linux").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            PlatformSpec::parse("linux/386").unwrap().to_string(),
            "linux/386"
        );
    }

    #[test]
    fn rejects_unknown_platforms_with_a_hint() {
        for bad in [
            "linux/sparc",
            "plan9/amd64",
            "linux/arm/v9",
            "linux//",
            "a/b/c/d",
            "windows/arm64",
        ] {
            let err = PlatformSpec::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn matching_respects_arm_variants() {
        let v7 = PlatformSpec::parse("linux/arm/v7").unwrap();
        let v6 = PlatformSpec::parse("linux/arm/v6").unwrap();
        let arm64 = PlatformSpec::parse("linux/arm64").unwrap();
        let arm64v8 = PlatformSpec::parse("linux/arm64/v8").unwrap();
        assert!(v7.can_run(&v6));
        assert!(!v6.can_run(&v7));
        assert!(arm64.can_run(&arm64v8));
        assert!(!arm64.can_run(&v7));
    }
}
