//! Container specs for `cmd` steps (networks, mounts, env, flags) and the mapping of container
//! paths to the host workspace.

use std::path::PathBuf;

use super::{container_name, RunCtx, DOCKER_SOCKET_MOUNT, HOME_MOUNT, WORKSPACE_MOUNT};
use crate::blobs::BlobStore;
use crate::cmdline::CmdFlags;
use crate::executor::{ContainerRuntime, ContainerSpec};
use crate::task::Step;

impl<R: ContainerRuntime, B: BlobStore> RunCtx<R, B> {
    /// The docker network a step joins, and whether it is one of the run's own networks.
    pub(super) fn resolve_network(&self, requested: &str) -> (String, bool) {
        if requested.is_empty() || requested == self.plan_default_network {
            return (self.default_network.clone(), true);
        }
        match self.networks.get(requested) {
            Some((docker_name, created)) => (docker_name.clone(), *created),
            None => (requested.to_string(), false),
        }
    }

    pub(super) fn step_network(&self, step: &Step) -> String {
        self.resolve_network(&step.network).0
    }

    pub(super) fn container_spec(
        &self,
        step: &Step,
        image: &str,
        args: Vec<String>,
        flags: &CmdFlags,
    ) -> Result<ContainerSpec, String> {
        let (network, own) =
            self.resolve_network(flags.network.as_deref().unwrap_or(&step.network));
        let working_dir = if let Some(wd) = &flags.workdir {
            Some(wd.clone())
        } else if step.disable_working_directory_override {
            None
        } else if step.working_directory.is_empty() {
            Some(WORKSPACE_MOUNT.to_string())
        } else {
            Some(step.working_directory.clone())
        };
        // ACR sets HOME before the step's own variables, so a step may override it.
        let mut env = vec![format!("HOME={HOME_MOUNT}")];
        env.extend(step.env.iter().cloned());
        env.extend(flags.env.iter().cloned());
        let mut ports = step.ports.clone();
        ports.extend(flags.ports.iter().cloned());
        let mut expose = step.expose.clone();
        expose.extend(flags.expose.iter().cloned());
        let entrypoint = flags
            .entrypoint
            .clone()
            .or_else(|| (!step.entry_point.is_empty()).then(|| step.entry_point.clone()))
            .map(|e| vec![e]);
        let user = flags
            .user
            .clone()
            .or_else(|| (!step.user.is_empty()).then(|| step.user.clone()));
        let mut binds = vec![
            format!("{}:{}", self.workspace.display(), WORKSPACE_MOUNT),
            format!("{}:{}", self.home.display(), HOME_MOUNT),
        ];
        let user_targets: Vec<&str> = flags
            .volumes
            .iter()
            .filter_map(|v| v.split(':').nth(1))
            .collect();
        if let Some(socket) = &self.env.engine_socket {
            if !user_targets.contains(&DOCKER_SOCKET_MOUNT) {
                binds.push(format!("{}:{}", socket.display(), DOCKER_SOCKET_MOUNT));
            }
        }
        for mount in &step.volume_mounts {
            let dir = self
                .volume_dirs
                .get(&mount.name)
                .ok_or_else(|| format!("volume mount {}: no volume of that name", mount.name))?;
            if !mount.mount_path.starts_with('/') || mount.mount_path.contains(':') {
                return Err(format!(
                    "volume mount {}: mountPath {:?} must be an absolute path without ':'",
                    mount.name, mount.mount_path
                ));
            }
            binds.push(format!("{}:{}:ro", dir.display(), mount.mount_path));
        }
        binds.extend(flags.volumes.iter().cloned());
        Ok(ContainerSpec {
            name: container_name(&self.resource_key, &step.id),
            image: image.to_string(),
            args,
            entrypoint,
            env,
            working_dir,
            user,
            network_aliases: if own && network != "host" && network != "none" {
                vec![step.id.clone()]
            } else {
                Vec::new()
            },
            network: Some(network),
            binds,
            ports,
            expose,
            privileged: step.privileged || flags.privileged,
            isolation: (!step.isolation.is_empty()).then(|| step.isolation.clone()),
            platform: None,
            tty: flags.tty,
            cpu_millis: self.limits.cpu_millis,
            memory_bytes: self.limits.memory_bytes,
        })
    }

    /// Maps `rel` (relative to the container directory `base`, or absolute) to the workspace
    /// on the host; only paths inside `/workspace` exist on the host.
    pub(super) fn host_path(&self, base: &str, rel: &str) -> Result<PathBuf, String> {
        let joined = if rel.starts_with('/') {
            rel.to_string()
        } else {
            format!("{base}/{rel}")
        };
        let normalized = normalize_path(&joined);
        let inside = normalized
            .strip_prefix(WORKSPACE_MOUNT)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| format!("{rel} is outside {WORKSPACE_MOUNT}"))?;
        Ok(self.workspace.join(inside.trim_start_matches('/')))
    }
}

/// Lexically cleans an absolute path (`/a/./b/../c` → `/a/c`); `..` never climbs above `/`.
pub(super) fn normalize_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}
