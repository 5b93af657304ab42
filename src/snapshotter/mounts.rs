//! The mounts a snapshot is used through, the way containerd's own overlayfs
//! snapshotter returns them (snapshots/overlay/overlay.go `mounts`, 1.6), so
//! containerd's mount code handles them unchanged.

use std::path::Path;

use super::state::Kind;

/// One mount(8) for containerd to perform: `type`, `source`, options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: &'static str,
    pub source: String,
    pub options: Vec<String>,
}

/// The mounts of a snapshot of `kind` whose own tree is `fs` (and scratch dir
/// `work`), over `lowers` (its parents' trees, nearest first):
/// - no parent: a bind mount of `fs` (overlayfs needs a lower layer);
/// - a view of one parent: a read-only bind mount of the parent;
/// - otherwise overlayfs with `lowerdir=` the parents, plus `upperdir=` and
///   `workdir=` for an active snapshot. `index=off` because remote lowers are
///   FUSE trees, which need not keep inode numbers stable across mounts.
pub fn mounts(kind: Kind, fs: &Path, work: &Path, lowers: &[impl AsRef<Path>]) -> Vec<Mount> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let bind = |source: &Path, access: &str| Mount {
        kind: "bind",
        source: path(source),
        options: vec![access.to_string(), "rbind".to_string()],
    };
    match (kind, lowers) {
        (Kind::View, []) => vec![bind(fs, "ro")],
        (_, []) => vec![bind(fs, "rw")],
        (Kind::View, [only]) => vec![bind(only.as_ref(), "ro")],
        _ => {
            let mut options = vec!["index=off".to_string()];
            if kind == Kind::Active {
                options.push(format!("workdir={}", path(work)));
                options.push(format!("upperdir={}", path(fs)));
            }
            let lowerdir: Vec<String> = lowers.iter().map(|l| path(l.as_ref())).collect();
            options.push(format!("lowerdir={}", lowerdir.join(":")));
            vec![Mount {
                kind: "overlay",
                source: "overlay".to_string(),
                options,
            }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [&str; 0] = [];

    #[test]
    fn a_base_layer_is_a_bind_mount() {
        let m = mounts(
            Kind::Active,
            Path::new("/r/1/fs"),
            Path::new("/r/1/work"),
            &NONE,
        );
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let v = mounts(
            Kind::View,
            Path::new("/r/1/fs"),
            Path::new("/r/1/work"),
            &NONE,
        );
        assert_eq!(v[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn a_view_of_one_layer_binds_that_layer_read_only() {
        let m = mounts(
            Kind::View,
            Path::new("/r/2/fs"),
            Path::new("/r/2/work"),
            &["/r/1/fs"],
        );
        assert_eq!((m[0].source.as_str(), m[0].kind), ("/r/1/fs", "bind"));
        assert_eq!(m[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn a_container_is_an_overlay_with_the_nearest_parent_first() {
        let m = mounts(
            Kind::Active,
            Path::new("/r/3/fs"),
            Path::new("/r/3/work"),
            &["/r/2/fs", "/r/1/fs"],
        );
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(
            m[0].options,
            [
                "index=off",
                "workdir=/r/3/work",
                "upperdir=/r/3/fs",
                "lowerdir=/r/2/fs:/r/1/fs"
            ]
        );
        let v = mounts(
            Kind::View,
            Path::new("/r/3/fs"),
            Path::new("/r/3/work"),
            &["/a", "/b"],
        );
        assert_eq!(v[0].options, ["index=off", "lowerdir=/a:/b"]);
    }
}
