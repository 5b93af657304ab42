//! Test helper: builds layer tars in memory, shared by layer and tree tests.

use tar::{Builder, EntryType, Header};

use super::{EntryTable, read_entries};

pub(crate) const MTIME: u64 = 1_700_000_000;

/// A GNU header (so long names get `L`/`K` records) with test defaults.
pub(crate) fn header(entry_type: EntryType, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(0);
    header
}

pub(crate) struct TestTar {
    builder: Builder<Vec<u8>>,
}

impl TestTar {
    pub(crate) fn new() -> Self {
        TestTar {
            builder: Builder::new(Vec::new()),
        }
    }

    pub(crate) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(header(EntryType::Regular, 0o644), path, data)
    }

    pub(crate) fn file_with(&mut self, mut header: Header, path: &str, data: &[u8]) -> &mut Self {
        header.set_size(data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .expect("append file");
        self
    }

    pub(crate) fn dir(&mut self, path: &str) -> &mut Self {
        self.dir_with(header(EntryType::Directory, 0o755), path)
    }

    pub(crate) fn dir_with(&mut self, mut header: Header, path: &str) -> &mut Self {
        self.builder
            .append_data(&mut header, path, &[][..])
            .expect("append dir");
        self
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, path, target)
    }

    pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, path, target)
    }

    fn link(&mut self, entry_type: EntryType, path: &str, target: &str) -> &mut Self {
        let mut header = header(entry_type, 0o777);
        self.builder
            .append_link(&mut header, path, target)
            .expect("append link");
        self
    }

    pub(crate) fn device(
        &mut self,
        entry_type: EntryType,
        path: &str,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut header = header(entry_type, 0o660);
        header.set_device_major(major).expect("major");
        header.set_device_minor(minor).expect("minor");
        self.dir_with(header, path)
    }

    /// PAX records for the next entry.
    pub(crate) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .expect("append pax");
        self
    }

    /// Writes `name` into the header verbatim, bypassing the builder's
    /// refusal of absolute and `..` names.
    pub(crate) fn raw(
        &mut self,
        mut header: Header,
        name: &[u8],
        link: &[u8],
        data: &[u8],
    ) -> &mut Self {
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).expect("append raw");
        self
    }

    pub(crate) fn bytes(&mut self) -> Vec<u8> {
        self.builder.finish().expect("finish");
        self.builder.get_ref().clone()
    }

    pub(crate) fn index(&mut self) -> EntryTable {
        read_entries(&self.bytes()[..]).expect("index layer")
    }
}
