//! Tree inodes as the kernel sees them (`stat`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::layer::Timestamp;
use crate::tree::{Ino, Inode, InodeKind};

/// `st_blksize`: the preferred I/O size callers use to size their reads.
const BLOCK_SIZE: u32 = 4096;

pub(crate) fn file_attr(ino: Ino, inode: &Inode, owner: Option<(u32, u32)>) -> FileAttr {
    let size = inode.size();
    let mtime = system_time(inode.mtime);
    let (uid, gid) = owner.unwrap_or((inode.uid, inode.gid));
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        // The tree has only one timestamp; a read-only image never changes,
        // so access and change times equal the modification time.
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(&inode.kind),
        // The mask makes the narrowing exact; setuid/setgid/sticky included.
        perm: (inode.mode & 0o7777) as u16,
        nlink: inode.nlink,
        uid,
        gid,
        rdev: inode.rdev(),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

pub(crate) fn file_type(kind: &InodeKind) -> FileType {
    match kind {
        InodeKind::Regular(_) => FileType::RegularFile,
        InodeKind::Directory(_) => FileType::Directory,
        InodeKind::Symlink(_) => FileType::Symlink,
        InodeKind::CharDevice(_) => FileType::CharDevice,
        InodeKind::BlockDevice(_) => FileType::BlockDevice,
        InodeKind::Fifo => FileType::NamedPipe,
    }
}

/// Attributes for a negative lookup answer (node id 0): the kernel then
/// caches "no such name" for the entry TTL and ignores everything else.
pub(crate) fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// `secs` may be negative (before 1970); `nanos` counts forward from `secs`.
/// Times beyond what `SystemTime` holds clamp to the epoch rather than panic.
fn system_time(t: Timestamp) -> SystemTime {
    let whole = Duration::from_secs(t.secs.unsigned_abs());
    let base = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    base.and_then(|b| b.checked_add(Duration::from_nanos(u64::from(t.nanos))))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_before_and_after_the_epoch() {
        let t = |secs, nanos| system_time(Timestamp { secs, nanos });
        assert_eq!(t(0, 0), UNIX_EPOCH);
        assert_eq!(
            t(4_000_000_000, 5),
            UNIX_EPOCH + Duration::new(4_000_000_000, 5)
        );
        assert_eq!(t(-2, 500_000_000), UNIX_EPOCH - Duration::from_millis(1500));
    }
}
