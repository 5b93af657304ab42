//! Lexical normalization of tar member names.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum PathProblem {
    /// A `..` component climbs above the image root.
    Escapes,
    Nul,
}

/// Turns a tar name into the canonical relative form: no leading `/`
/// (absolute names are taken relative to the image root, as umoci and podman
/// do), no `.` or empty components, `..` folded lexically. The root
/// directory becomes the empty path.
pub(super) fn normalize(raw: &[u8]) -> Result<OsString, PathProblem> {
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                parts.pop().ok_or(PathProblem::Escapes)?;
            }
            name => parts.push(name),
        }
    }
    Ok(OsString::from_vec(parts.join(&b'/')))
}

/// Splits a normalized path into (parent, base name); the root has no split.
pub(crate) fn split_parent(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.is_empty() {
        return None;
    }
    Some(match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&[], path),
    })
}

/// Joins a normalized directory path and a base name.
pub(super) fn join(dir: &[u8], name: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        out.extend_from_slice(dir);
        out.push(b'/');
    }
    out.extend_from_slice(name);
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, PathProblem> {
        normalize(s.as_bytes()).map(|p| p.into_string().expect("utf8"))
    }

    #[test]
    fn normalizes_components() {
        assert_eq!(norm("./a/b/").unwrap(), "a/b");
        assert_eq!(norm("/abs//x/./y").unwrap(), "abs/x/y");
        assert_eq!(norm("./").unwrap(), "");
        assert_eq!(norm("/").unwrap(), "");
        assert_eq!(norm("a/../b").unwrap(), "b");
        assert_eq!(norm("../a"), Err(PathProblem::Escapes));
        assert_eq!(norm("a/../../b"), Err(PathProblem::Escapes));
        assert_eq!(norm("/../etc/passwd"), Err(PathProblem::Escapes));
        assert_eq!(norm("a\0b"), Err(PathProblem::Nul));
    }

    #[test]
    fn splits_and_joins() {
        assert_eq!(split_parent(b"a/b/c"), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(split_parent(b"c"), Some((&b""[..], &b"c"[..])));
        assert_eq!(split_parent(b""), None);
        assert_eq!(join(b"", b"x"), OsString::from("x"));
        assert_eq!(join(b"a/b", b"x"), OsString::from("a/b/x"));
    }
}
