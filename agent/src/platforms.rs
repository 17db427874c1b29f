//! Which platforms this agent can run: the engine's native one, plus foreign architectures
//! that have an enabled QEMU handler registered with binfmt_misc (marked emulated).

use std::path::Path;

use kiln_proto::pb::Platform;
use kiln_proto::v1::AgentPlatform;

use crate::executor::EnginePlatform;

/// The usual binfmt_misc mount point.
pub const BINFMT_MISC_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Platforms runnable with the engine on `native`, given the binfmt_misc directory.
pub fn detect(native: &EnginePlatform, binfmt_dir: &Path) -> Vec<AgentPlatform> {
    let mut out: Vec<AgentPlatform> = Vec::new();
    let mut add = |os: &str, arch: &str, variant: &str, emulated: bool| {
        let platform = Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.to_string(),
        };
        if !out.iter().any(|p| p.platform.as_ref() == Some(&platform)) {
            out.push(AgentPlatform {
                platform: Some(platform),
                emulated,
            });
        }
    };
    add(&native.os, &native.architecture, &native.variant, false);
    if native.os == "linux" && native.architecture == "amd64" {
        // An amd64 kernel runs i386 binaries natively.
        add("linux", "386", "", false);
    }
    if native.os != "linux" {
        return out;
    }
    for handler in enabled_handlers(binfmt_dir) {
        for (arch, variant) in handler_platforms(&handler) {
            if *arch == native.architecture && *variant == native.variant {
                continue;
            }
            add("linux", arch, variant, true);
        }
    }
    out
}

/// The OCI platforms a QEMU binfmt handler name stands for.
fn handler_platforms(handler: &str) -> &'static [(&'static str, &'static str)] {
    match handler {
        "qemu-aarch64" => &[("arm64", "")],
        "qemu-arm" => &[("arm", "v7"), ("arm", "v6")],
        "qemu-i386" => &[("386", "")],
        "qemu-x86_64" => &[("amd64", "")],
        "qemu-riscv64" => &[("riscv64", "")],
        "qemu-ppc64le" => &[("ppc64le", "")],
        "qemu-s390x" => &[("s390x", "")],
        _ => &[],
    }
}

/// Names of the enabled `qemu-*` handlers (the first line of each entry is `enabled`).
fn enabled_handlers(binfmt_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(binfmt_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("qemu-") {
                return None;
            }
            let text = std::fs::read_to_string(entry.path()).ok()?;
            (text.lines().next() == Some("enabled")).then_some(name)
        })
        .collect();
    names.sort();
    names
}

/// `os/arch[/variant]`, the form the Engine API takes.
pub fn platform_string(platform: &Platform) -> String {
    let mut out = format!("{}/{}", platform.os, platform.architecture);
    if !platform.variant.is_empty() {
        out.push('/');
        out.push_str(&platform.variant);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(platforms: &[AgentPlatform]) -> Vec<(String, bool)> {
        platforms
            .iter()
            .map(|p| {
                (
                    platform_string(p.platform.as_ref().expect("platform")),
                    p.emulated,
                )
            })
            .collect()
    }

    #[test]
    fn native_plus_enabled_qemu_handlers() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("qemu-arm"), "enabled\n").expect("write");
        std::fs::write(dir.path().join("qemu-mips"), "enabled\n").expect("write");
        std::fs::write(dir.path().join("qemu-s390x"), "disabled\n").expect("write");
        std::fs::write(dir.path().join("qemu-i386"), "enabled\n").expect("write");
        std::fs::write(dir.path().join("qemu-x86_64"), "enabled\n").expect("write");
        std::fs::write(dir.path().join("status"), "enabled\n").expect("write");
        let native = EnginePlatform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        };
        assert_eq!(
            names(&detect(&native, dir.path())),
            vec![
                ("linux/amd64".to_string(), false),
                ("linux/386".to_string(), false),
                ("linux/arm64".to_string(), true),
                ("linux/arm/v7".to_string(), true),
                ("linux/arm/v6".to_string(), true),
            ]
        );
    }

    #[test]
    fn missing_binfmt_dir_gives_native_only() {
        let native = EnginePlatform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: String::new(),
        };
        assert_eq!(
            names(&detect(&native, Path::new("/nonexistent/binfmt"))),
            vec![("linux/arm64".to_string(), false)]
        );
    }
}
