//! Does a path exist inside an image's root filesystem? Symlinks are followed
//! the way the container will see them: an absolute link target restarts from
//! the image's root, never from the host's.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use super::Bind;

/// Symlinks followed before giving up (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// The host path `path` (absolute, as seen in the container) names inside the
/// image rooted at `rootfs`, following symlinks within the image; `None` if it
/// does not exist, or loops. `..` never climbs above `rootfs`.
pub fn resolve_in_root(rootfs: &Path, path: &Path) -> Option<PathBuf> {
    let mut todo: VecDeque<OsString> = components(path).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut here = rootfs.to_path_buf();
        here.extend(&resolved);
        here.push(&name);
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            if target.is_absolute() {
                resolved.clear();
            }
            for (i, c) in components(&target).enumerate() {
                todo.insert(i, c);
            }
        } else {
            resolved.push(name);
        }
    }
    let mut out = rootfs.to_path_buf();
    out.extend(&resolved);
    Some(out)
}

/// `path`'s names and `..`s, without the root and `.`s.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// The bind targets that do not exist in the image at `rootfs`: Charliecloud
/// cannot create them in a read-only image.
pub fn missing_bind_targets(rootfs: &Path, binds: &[Bind]) -> Vec<PathBuf> {
    binds
        .iter()
        .filter(|b| resolve_in_root(rootfs, &b.target).is_none())
        .map(|b| b.target.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn follows_symlinks_inside_the_image_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("mnt/0")).unwrap();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("/mnt", r.join("data")).unwrap(); // absolute: image's /mnt
        symlink("usr/lib", r.join("lib")).unwrap(); // relative
        symlink("../../mnt", r.join("usr/up")).unwrap();
        symlink("/loop", r.join("loop")).unwrap();
        // Exists on the host, not in the image: must not be found through a link.
        symlink("/proc/self", r.join("hostlink")).unwrap();

        assert_eq!(resolve_in_root(r, Path::new("/")), Some(r.to_path_buf()));
        assert_eq!(
            resolve_in_root(r, Path::new("/data/0")),
            Some(r.join("mnt/0"))
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/lib")),
            Some(r.join("usr/lib"))
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/usr/up/0")),
            Some(r.join("mnt/0"))
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/../../mnt")),
            Some(r.join("mnt"))
        );
        assert_eq!(resolve_in_root(r, Path::new("/loop")), None);
        assert_eq!(resolve_in_root(r, Path::new("/hostlink")), None);
        assert_eq!(resolve_in_root(r, Path::new("/nope")), None);

        let binds = [
            Bind::new("/srv", "/data"),
            Bind::new("/srv", "/scratch"),
            Bind::new("/srv", "/hostlink/fd"),
        ];
        assert_eq!(
            missing_bind_targets(r, &binds),
            [PathBuf::from("/scratch"), PathBuf::from("/hostlink/fd")]
        );
    }
}
