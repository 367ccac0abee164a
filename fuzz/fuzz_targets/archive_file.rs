//! `replay`'s reader of archive files.
//!
//! Checks that any bytes are either refused with an error or read into a file that keeps the
//! rules replay relies on — valid names, ids and seqs from 1 and unique, content without control
//! characters — and that what is read is written back and read again unchanged.
#![no_main]

use std::collections::HashSet;

use baby_discord::core::names::{Nickname, RoomName, sanitize};
use baby_discord::store::archive::ArchiveFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = ArchiveFile::parse(data) else {
        return;
    };
    assert_eq!(RoomName::parse(&file.room).unwrap().as_str(), file.room);
    let mut ids = HashSet::new();
    let mut seqs = HashSet::new();
    for m in &file.messages {
        assert!(m.id >= 1 && m.seq >= 1);
        assert!(ids.insert(m.id) && seqs.insert(m.seq));
        assert_eq!(Nickname::parse(&m.user).unwrap().as_str(), m.user);
        assert_eq!(sanitize(&m.content), m.content);
    }
    let written = serde_json::to_vec(&file).expect("a file read is written");
    let again = ArchiveFile::parse(&written).expect("a file written is read");
    assert_eq!(again, file);
});
