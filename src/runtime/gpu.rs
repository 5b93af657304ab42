//! `lazyimg run --gpus`: NVIDIA GPUs in the container.
//!
//! * Apptainer: `--nv`, plus `--nvccli` when the host has
//!   `nvidia-container-cli` (Apptainer then lets libnvidia-container set up
//!   the driver and devices, as the NVIDIA runtime hooks do).
//! * Podman: CDI, `--device nvidia.com/gpu=all` or one `=N` per GPU, which needs
//!   a CDI spec for `nvidia.com/gpu` in `/etc/cdi` or `/var/run/cdi` (written by
//!   `nvidia-ctk cdi generate`); without one lazyimg refuses before starting.
//! * Charliecloud: lazyimg adds the host's driver to the mounted tree itself
//!   ([`super::nvidia`]); `ch-fromhost --nvidia` would copy it into the image,
//!   and a lazy mount is read-only. The devices come with ch-run's `/dev`.
//!
//! GPU selection travels in the environment (an exception to the policy in the
//! module doc, only with `--gpus`): with `all`, the host's
//! `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` (a scheduler's
//! allocation) pass through, since every device is exposed and host indices stay
//! valid. With a list, Podman exposes only those devices (numbered from 0
//! inside), so nothing is set; Apptainer gets `NVIDIA_VISIBLE_DEVICES=LIST`
//! (which `--nvccli` exposes, again numbered from 0) and, without `--nvccli`,
//! where `--nv` binds every device, `CUDA_VISIBLE_DEVICES=LIST` too.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::{RunSpec, Runtime, RuntimeError, find_program};

/// The variables that select GPUs.
const SELECTION_VARS: [&str; 2] = ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];

/// The CDI device kind `nvidia-ctk cdi generate` writes.
const CDI_KIND: &str = "nvidia.com/gpu";

/// Which GPUs the container gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gpus {
    All,
    /// Host GPU indices, as `nvidia-smi` numbers them.
    Devices(Vec<u32>),
}

impl FromStr for Gpus {
    type Err = RuntimeError;

    /// `all` or `N[,M…]`, as `--gpus` takes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(Gpus::All);
        }
        s.split(',')
            .map(|n| n.trim().parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map(Gpus::Devices)
            .map_err(|_| {
                RuntimeError::InvalidSpec(format!(
                    "--gpus {s:?}: expected all or GPU indices such as 0,1"
                ))
            })
    }
}

impl fmt::Display for Gpus {
    /// `all`, or the indices joined by commas (the form the variables take).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gpus::All => f.write_str("all"),
            Gpus::Devices(list) => {
                let list: Vec<String> = list.iter().map(u32::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// Where this host's GPU devices, CDI specs and tools are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuHost {
    /// Holds the `nvidia[0-9]*` device nodes: `/dev` (tests point elsewhere).
    pub dev_dir: PathBuf,
    /// Where Podman looks for CDI specs.
    pub cdi_dirs: Vec<PathBuf>,
    /// `nvidia-container-cli` is on `PATH` (Apptainer's `--nvccli`).
    pub nvidia_container_cli: bool,
    /// A directory standing in for the host's driver (`lib/` and `bin/`,
    /// see [`super::nvidia::DriverFiles::find`]); `None`: discover it.
    pub driver_dir: Option<PathBuf>,
}

/// Test-only settings: a directory standing for `/dev` (holding
/// `nvidia[0-9]*` nodes) and one standing for the host's driver.
const TEST_DEV_DIR: &str = "LAZYIMG_TEST_GPU_DEV_DIR";
const TEST_DRIVER_DIR: &str = "LAZYIMG_TEST_NVIDIA_DRIVER_DIR";

impl Default for GpuHost {
    /// This host's standard places; no `nvidia-container-cli`.
    fn default() -> Self {
        GpuHost {
            dev_dir: "/dev".into(),
            cdi_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
            nvidia_container_cli: false,
            driver_dir: None,
        }
    }
}

impl GpuHost {
    /// The standard places, and whether `nvidia-container-cli` is on `PATH`;
    /// the test-only variables `LAZYIMG_TEST_GPU_DEV_DIR` and
    /// `LAZYIMG_TEST_NVIDIA_DRIVER_DIR` replace `/dev` and the driver.
    pub fn from_process() -> Self {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        GpuHost {
            nvidia_container_cli: find_program("nvidia-container-cli", &path).is_some(),
            dev_dir: var(TEST_DEV_DIR).unwrap_or_else(|| "/dev".into()),
            driver_dir: var(TEST_DRIVER_DIR),
            ..GpuHost::default()
        }
    }

    fn has_gpu_device(&self) -> bool {
        std::fs::read_dir(&self.dev_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("nvidia"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    }

    /// The first CDI spec file (`.json`, `.yaml`, `.yml`) naming `nvidia.com/gpu`.
    fn nvidia_cdi_spec(&self) -> Option<PathBuf> {
        self.cdi_dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension()
                    .is_some_and(|x| x == "json" || x == "yaml" || x == "yml")
                    && std::fs::read_to_string(p).is_ok_and(|t| t.contains(CDI_KIND))
            })
    }
}

/// Refuses `--gpus` before anything starts when the host cannot serve it:
/// the host has no NVIDIA device, Podman has no CDI spec for them, or, for
/// Charliecloud, the host has no driver libraries to inject.
pub fn check_gpus(
    runtime: Runtime,
    gpus: Option<&Gpus>,
    host: &GpuHost,
) -> Result<(), RuntimeError> {
    if gpus.is_none() {
        return Ok(());
    }
    if !host.has_gpu_device() {
        return Err(RuntimeError::NoGpu(host.dev_dir.join("nvidia0")));
    }
    if runtime == Runtime::Podman && host.nvidia_cdi_spec().is_none() {
        return Err(RuntimeError::NoCdiSpec(host.cdi_dirs.clone()));
    }
    if runtime == Runtime::Charliecloud {
        super::nvidia::DriverFiles::find(host)?;
    }
    Ok(())
}

/// The GPU selection variables the container gets (module doc), from the
/// host's `vars`.
pub(super) fn selection_env(runtime: Runtime, spec: &RunSpec) -> Vec<(String, String)> {
    match &spec.gpus {
        None => Vec::new(),
        Some(Gpus::All) => spec
            .host
            .vars
            .iter()
            .filter(|(k, _)| SELECTION_VARS.contains(&k.as_str()))
            .cloned()
            .collect(),
        Some(list @ Gpus::Devices(_)) => {
            let names: &[&str] = match runtime {
                Runtime::Podman | Runtime::Charliecloud => &[],
                Runtime::Apptainer if spec.host.gpu.nvidia_container_cli => {
                    &["NVIDIA_VISIBLE_DEVICES"]
                }
                Runtime::Apptainer => &SELECTION_VARS,
            };
            names
                .iter()
                .map(|k| (k.to_string(), list.to_string()))
                .collect()
        }
    }
}

/// Podman's `--device` arguments for `gpus` (CDI names).
pub(super) fn podman_devices(gpus: &Gpus) -> Vec<String> {
    let names = match gpus {
        Gpus::All => vec!["all".to_string()],
        Gpus::Devices(list) => list.iter().map(u32::to_string).collect(),
    };
    names.iter().map(|n| format!("{CDI_KIND}={n}")).collect()
}

/// Apptainer's GPU flags.
pub(super) fn apptainer_flags(host: &GpuHost) -> &'static [&'static str] {
    if host.nvidia_container_cli {
        &["--nv", "--nvccli"]
    } else {
        &["--nv"]
    }
}
