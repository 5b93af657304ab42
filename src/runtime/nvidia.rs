//! The host's NVIDIA user-space driver, injected into a Charliecloud job's
//! mount: Charliecloud's own way (`ch-fromhost --nvidia`) copies it into the
//! image, which a lazy, read-only mount cannot take, so lazyimg adds the
//! files to the mounted tree itself, read from the host when read
//! ([`crate::rootfs::synthetic`]).
//!
//! Which files: `nvidia-container-cli list --libraries --binaries` when the
//! host has it (libnvidia-container's own list), else the host's `ldconfig
//! -p` entries whose names start with one of [`LIBRARY_PREFIXES`] (x86-64)
//! and the [`BINARIES`] found on `PATH`. Where: each library under its
//! soname in the image's library directory (the first of
//! [`LIBRARY_DIRS`] the image has), where the loader finds it by its default
//! search path after a cache miss (ld.so(8)), so `LD_LIBRARY_PATH` and the
//! image's `ld.so.cache` stay the image's; binaries in `/usr/bin`. A path the
//! image already has keeps the image's file. Device nodes come with
//! Charliecloud's bind of the host's `/dev`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::RuntimeError;
use super::find_program;
use super::gpu::GpuHost;
use crate::rootfs::synthetic::SyntheticFiles;
use crate::tree::{ROOT_INO, Tree};

/// Library name prefixes of the NVIDIA user-space driver (the libraries
/// libnvidia-container mounts for the `compute` and `utility` capabilities).
pub const LIBRARY_PREFIXES: [&str; 5] = [
    "libcuda.so",
    "libnvidia-",
    "libcudadebugger.so",
    "libnvcuvid.so",
    "libnvoptix.so",
];

/// Driver programs a GPU job may call.
pub const BINARIES: [&str; 5] = [
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];

/// Library directories, in order of preference (Debian/Ubuntu multiarch,
/// then RHEL-like, then the generic one).
pub const LIBRARY_DIRS: [&str; 3] = ["usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib"];

/// The driver's files on the host: libraries by soname, programs by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DriverFiles {
    pub libraries: BTreeMap<String, PathBuf>,
    pub binaries: BTreeMap<String, PathBuf>,
}

impl DriverFiles {
    /// The host's driver files (module doc). `host.driver_dir`, when set,
    /// replaces the discovery: its `lib/` holds libraries named by soname
    /// and its `bin/` programs (a test fixture).
    ///
    /// Errors: [`RuntimeError::NoGpuDriver`] when no library is found.
    pub fn find(host: &GpuHost) -> Result<DriverFiles, RuntimeError> {
        let found = match &host.driver_dir {
            Some(dir) => DriverFiles {
                libraries: files_in(&dir.join("lib")),
                binaries: files_in(&dir.join("bin")),
            },
            None => {
                let ldconfig = command_output("ldconfig", &["-p"]).unwrap_or_default();
                let mut found = DriverFiles {
                    libraries: parse_ldconfig(&ldconfig),
                    ..DriverFiles::default()
                };
                if host.nvidia_container_cli
                    && let Some(list) = command_output(
                        "nvidia-container-cli",
                        &["list", "--libraries", "--binaries"],
                    )
                {
                    found.merge_container_cli_list(&list);
                }
                let path = std::env::var_os("PATH").unwrap_or_default();
                for name in BINARIES {
                    if let Some(program) = find_program(name, &path) {
                        found.binaries.entry(name.to_string()).or_insert(program);
                    }
                }
                found
            }
        };
        if found.libraries.is_empty() {
            return Err(RuntimeError::NoGpuDriver);
        }
        Ok(found)
    }

    /// Adds what `nvidia-container-cli list` printed (one absolute path per
    /// line): programs by file name, libraries under the soname `ldconfig`
    /// knows them by (else their file name).
    fn merge_container_cli_list(&mut self, list: &str) {
        let by_target: BTreeMap<PathBuf, String> = self
            .libraries
            .iter()
            .filter_map(|(name, path)| Some((std::fs::canonicalize(path).ok()?, name.clone())))
            .collect();
        for line in list.lines().map(str::trim).filter(|l| l.starts_with('/')) {
            let path = PathBuf::from(line);
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if file_name.contains(".so") {
                let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                let name = by_target
                    .get(&real)
                    .cloned()
                    .unwrap_or_else(|| file_name.to_string());
                self.libraries.entry(name).or_insert(path);
            } else {
                self.binaries.entry(file_name.to_string()).or_insert(path);
            }
        }
    }

    /// The synthetic entries that put these files into the image whose tree
    /// is `tree` (module doc), added to `files`. Errors: a host file cannot
    /// be opened.
    pub fn inject(&self, tree: &Tree, files: &mut SyntheticFiles) -> std::io::Result<()> {
        let lib_dir = LIBRARY_DIRS
            .iter()
            .find(|dir| is_directory(tree, dir))
            .copied()
            .unwrap_or("usr/lib");
        ensure_dirs(tree, files, lib_dir);
        for (name, host) in &self.libraries {
            files.host_file(&format!("{lib_dir}/{name}"), 0o755, host)?;
        }
        ensure_dirs(tree, files, "usr/bin");
        for (name, host) in &self.binaries {
            files.host_file(&format!("usr/bin/{name}"), 0o755, host)?;
        }
        Ok(())
    }
}

/// The libraries `ldconfig -p` lists (`NAME (FLAGS) => PATH`) whose names
/// start with one of [`LIBRARY_PREFIXES`], 64-bit x86 only.
pub fn parse_ldconfig(text: &str) -> BTreeMap<String, PathBuf> {
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.split_once(" => ")?;
            let (name, flags) = left.trim().split_once(' ')?;
            let wanted = LIBRARY_PREFIXES.iter().any(|p| name.starts_with(p));
            (wanted && flags.contains("x86-64"))
                .then(|| (name.to_string(), PathBuf::from(path.trim())))
        })
        .collect()
}

/// Regular files (or links to them) directly in `dir`, by name.
fn files_in(dir: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect()
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_directory(tree: &Tree, path: &str) -> bool {
    let mut ino = ROOT_INO;
    for component in path.split('/') {
        match tree.lookup(ino, std::ffi::OsStr::new(component)) {
            Some(next) => ino = next,
            None => return false,
        }
    }
    tree.children(ino).is_some()
}

/// Adds the directories of `path` the image lacks (and `files` does not yet
/// have), root-owned, mode 0755.
fn ensure_dirs(tree: &Tree, files: &mut SyntheticFiles, path: &str) {
    let mut prefix = String::new();
    for component in path.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(component);
        if !is_directory(tree, &prefix) && !files.has(&prefix) {
            files.dir(&prefix, 0o755);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{EntryKind, EntryTable, TarEntry, Timestamp};

    #[test]
    fn ldconfig_output_gives_the_driver_libraries_by_soname() {
        let text = "1234 libs found in cache `/etc/ld.so.cache'\n\
            \tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n\
            \tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1\n\
            \tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n\
            \tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1\n\
            \tlibcuda.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so\n";
        let found = parse_ldconfig(text);
        let names: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(names, ["libcuda.so", "libcuda.so.1", "libnvidia-ml.so.1"]);
        assert_eq!(
            found["libcuda.so.1"],
            Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1")
        );
    }

    fn debian_like() -> Tree {
        let dir = |path: &str| TarEntry {
            path: path.into(),
            kind: EntryKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: Vec::new(),
        };
        let table = EntryTable {
            entries: vec![dir("usr"), dir("usr/lib"), dir("usr/lib/x86_64-linux-gnu")],
            whiteouts: Vec::new(),
        };
        Tree::build(&[table]).unwrap()
    }

    #[test]
    fn libraries_go_to_the_multiarch_directory_and_programs_to_usr_bin() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("lib"), b"elf").unwrap();
        std::fs::write(host.path().join("smi"), b"#!").unwrap();
        let driver = DriverFiles {
            libraries: [("libcuda.so.1".to_string(), host.path().join("lib"))].into(),
            binaries: [("nvidia-smi".to_string(), host.path().join("smi"))].into(),
        };
        let mut files = SyntheticFiles::default();
        driver.inject(&debian_like(), &mut files).unwrap();
        let paths: Vec<String> = files
            .parts()
            .0
            .iter()
            .map(|e| e.path.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "usr/lib/x86_64-linux-gnu/libcuda.so.1",
                "usr/bin",
                "usr/bin/nvidia-smi"
            ]
        );
    }

    #[test]
    fn a_fixture_directory_replaces_discovery_and_an_empty_one_is_no_driver() {
        let fixture = tempfile::tempdir().unwrap();
        let host = GpuHost {
            driver_dir: Some(fixture.path().to_path_buf()),
            ..GpuHost::default()
        };
        assert!(matches!(
            DriverFiles::find(&host),
            Err(RuntimeError::NoGpuDriver)
        ));
        std::fs::create_dir_all(fixture.path().join("lib")).unwrap();
        std::fs::write(fixture.path().join("lib/libcuda.so.1"), b"elf").unwrap();
        let found = DriverFiles::find(&host).unwrap();
        assert_eq!(found.libraries.keys().collect::<Vec<_>>(), ["libcuda.so.1"]);
    }
}
