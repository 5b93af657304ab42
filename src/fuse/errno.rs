//! Crate errors as the errno a FUSE caller receives.

use fuser::Errno;

use crate::error::Error;

/// Errno for a failed content read. The caller of `read(2)` cannot act on a
/// digest mismatch or an unreachable registry, so "the bytes are unavailable"
/// is `EIO` (the log line has the details); only resource exhaustion, which
/// the admin can fix, is reported as such.
pub(crate) fn read_errno(err: &Error) -> Errno {
    match err {
        Error::DiskFull { .. } => Errno::ENOSPC,
        Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOMEM) => Errno::ENOMEM,
        Error::Read(read) => read.local_cause().map_or(Errno::EIO, read_errno),
        _ => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::digest::Digest;

    #[test]
    fn data_problems_are_eio_resource_problems_are_named() {
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(read_errno(&Error::NotCached(digest)), Errno::EIO);
        let network = Error::Network {
            registry: "ghcr.io".into(),
            reason: "timed out".into(),
        };
        assert_eq!(read_errno(&network), Errno::EIO);
        let disk_full = Error::io("/cache", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(read_errno(&disk_full), Errno::ENOSPC);
        let no_memory = Error::io("/cache", io::Error::from_raw_os_error(libc::ENOMEM));
        assert_eq!(read_errno(&no_memory), Errno::ENOMEM);
        let denied = Error::io("/cache", io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(read_errno(&denied), Errno::EIO);
    }
}
