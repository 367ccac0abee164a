//! Throwaway servers the suite starts itself: PostgreSQL and (later) Valkey/Redis. Each runs in a
//! temporary directory on a free loopback port and is stopped when its handle is dropped, also
//! when a test fails.

pub mod postgres;
pub mod valkey;

use std::net::TcpListener;
use std::path::Path;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The uid and gid of a system user, from /etc/passwd.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name))
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Hands a directory tree to `ids` (when running as root, so a server that refuses root can use it).
pub fn chown_tree(path: &Path, ids: (u32, u32)) {
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), ids);
        }
    }
}

/// Sends `signal` (e.g. "-STOP") to processes the suite started.
pub fn signal(pids: &[u32], signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(std::process::Stdio::null())
        .status();
    assert!(status.is_ok(), "kill {signal}");
}

/// `pid` and the processes whose parent it is (PostgreSQL's backends and workers).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid)
            && let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok())
        {
            pids.push(child);
        }
    }
    pids
}
