//! From the image's config and the user's options to the workload spec guest-init receives, with Docker's rules
//! for combining them: `--entrypoint` replaces the image's Entrypoint and drops its Cmd; a command replaces Cmd;
//! `-e` overrides the image's Env by key; `-w` and `-u` override WorkingDir and User.

use super::options::{Network, RunOptions, Seccomp};
use agent_protocol::{NetworkConfig, ProcessSpec, SeccompPolicy, WorkloadSpec};

/// What the image's config says about running it (OCI image config `config` object).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Cmd.
    pub cmd: Vec<String>,
    /// Env, KEY=VALUE.
    pub env: Vec<String>,
    /// WorkingDir.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
}

/// Errors building the workload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing to run.
    #[error("no command given and image {0} has no Entrypoint or Cmd: add a command after the image name")]
    NoCommand(String),
    /// The seccomp profile could not be read.
    #[error("failed to read seccomp profile {path}")]
    Profile {
        /// The path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The argv Docker would run.
pub fn argv(o: &RunOptions, image: &ImageDefaults) -> Vec<String> {
    match &o.entrypoint {
        Some(ep) => ep.iter().chain(o.command.iter()).cloned().collect(),
        None => {
            let cmd = if o.command.is_empty() {
                &image.cmd
            } else {
                &o.command
            };
            image.entrypoint.iter().chain(cmd.iter()).cloned().collect()
        }
    }
}

/// Image Env with the user's entries laid over it, by key.
pub fn merged_env(image: &[String], user: &[String]) -> Vec<String> {
    let key = |e: &String| e.split('=').next().unwrap_or_default().to_string();
    let mut out: Vec<String> = image
        .iter()
        .filter(|e| !user.iter().any(|u| key(u) == key(e)))
        .cloned()
        .collect();
    out.extend(user.iter().cloned());
    out
}

/// The spec for `CreateAndStart`.
pub fn workload_spec(o: &RunOptions, image: &ImageDefaults) -> Result<WorkloadSpec, Error> {
    let args = argv(o, image);
    if args.is_empty() {
        return Err(Error::NoCommand(o.image.clone()));
    }
    let seccomp = match &o.seccomp {
        Seccomp::Default => SeccompPolicy::Default,
        Seccomp::Unconfined => SeccompPolicy::Unconfined,
        Seccomp::Profile(path) => {
            SeccompPolicy::Profile(std::fs::read_to_string(path).map_err(|source| {
                Error::Profile {
                    path: path.clone(),
                    source,
                }
            })?)
        }
    };
    let network = match &o.network {
        Network::None => None,
        Network::Tap { .. } => Some(NetworkConfig {
            address: o.ip.clone(),
            gateway: o.gateway.clone(),
            dns: o.dns.clone(),
            ..Default::default()
        }),
    };
    Ok(WorkloadSpec {
        process: ProcessSpec {
            args,
            env: merged_env(&image.env, &o.env),
            cwd: o.workdir.clone().or_else(|| image.working_dir.clone()),
            user: o
                .user
                .clone()
                .or_else(|| image.user.clone().filter(|u| !u.is_empty())),
            stdin: o.interactive,
            tty: o.tty,
            // The supervisor measures the terminal it inherits just before the start.
            window: None,
        },
        hostname: o.hostname.clone(),
        cap_add: o.cap_add.clone(),
        cap_drop: o.cap_drop.clone(),
        seccomp,
        no_new_privileges: o.no_new_privileges,
        read_only: o.read_only,
        tmpfs: o.tmpfs.clone(),
        memory_bytes: o.memory_mib.map(|m| m << 20),
        cpus: o.cpus,
        pids_limit: (o.pids_limit > 0).then_some(o.pids_limit),
        network,
        // `mvrun run`: the VM's one container.
        container: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: Some("/srv".into()),
            user: Some("app".into()),
        }
    }

    #[test]
    fn docker_rules_for_entrypoint_and_cmd() {
        let mut o = RunOptions::new("x");
        assert_eq!(argv(&o, &image()), ["/entry", "default"]);
        o.command = vec!["mine".into()];
        assert_eq!(argv(&o, &image()), ["/entry", "mine"]);
        o.entrypoint = Some(vec!["/other".into()]);
        assert_eq!(argv(&o, &image()), ["/other", "mine"]);
        o.command.clear();
        assert_eq!(
            argv(&o, &image()),
            ["/other"],
            "--entrypoint drops the image's Cmd"
        );
    }

    #[test]
    fn user_env_overrides_image_env_by_key() {
        assert_eq!(
            merged_env(
                &["PATH=/bin".into(), "A=image".into()],
                &["A=user".into(), "B=2".into()]
            ),
            ["PATH=/bin", "A=user", "B=2"]
        );
    }

    #[test]
    fn options_reach_the_spec() {
        let mut o = RunOptions::new("x");
        o.workdir = Some("/tmp".into());
        o.memory_mib = Some(64);
        o.interactive = true;
        o.tty = true;
        o.seccomp = Seccomp::Unconfined;
        let s = workload_spec(&o, &image()).unwrap();
        assert!(s.process.tty, "-t asks guest-init for a terminal");
        assert_eq!(s.process.cwd.as_deref(), Some("/tmp"));
        assert_eq!(s.process.user.as_deref(), Some("app"));
        assert_eq!(s.memory_bytes, Some(64 << 20));
        assert!(s.process.stdin && s.no_new_privileges);
        assert_eq!(s.seccomp, SeccompPolicy::Unconfined);
        assert_eq!(
            s.pids_limit,
            Some(super::super::options::DEFAULT_PIDS_LIMIT)
        );
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let o = RunOptions::new("scratch");
        assert!(workload_spec(&o, &ImageDefaults::default()).is_err());
    }
}
