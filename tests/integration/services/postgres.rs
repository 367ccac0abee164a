//! A throwaway PostgreSQL server.
//!
//! `initdb` runs once per machine into a cached template (it is the slow part); every server
//! copies it into its own temporary data directory. As root (CI), everything runs as the
//! `postgres` system user, because `initdb` and `postgres` refuse to run as root.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{chown_tree, free_port, running_as_root, signal, user_ids, with_children};

const READY: &str = "database system is ready to accept connections";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Postgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    server: Option<Child>,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let run_as = running_as_root().then(|| {
            user_ids("postgres").expect("a 'postgres' system user (apt-get install postgresql)")
        });
        let template = template(&bin, run_as);
        let dir =
            std::env::temp_dir().join(format!("baby-discord-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        if let Some(ids) = run_as {
            chown_tree(&dir, ids);
        }
        let copied = as_user(
            Command::new("cp")
                .arg("-a")
                .arg(template.join("data"))
                .arg(&dir),
            run_as,
        )
        .status()
        .unwrap();
        assert!(copied.success(), "copying the PostgreSQL template");
        let mut pg = Postgres {
            dir,
            port: free_port(),
            bin,
            run_as,
            server: None,
        };
        pg.resume();
        pg
    }

    /// Starts (again) the server on its data directory and port.
    pub fn resume(&mut self) {
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
            ])
            // Throwaway data: crash safety of the host is not what the tests exercise.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = as_user(&mut command, self.run_as)
            .spawn()
            .expect("starting postgres");
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        // Reads the log until the server exits: the readiness line is the signal to go on, and a
        // pipe nobody drains would eventually block the server.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains(READY) {
                    let _ = ready_tx.send(Ok(()));
                } else if (line.contains("FATAL") || line.contains("could not"))
                    // Clients knocking while crash recovery runs are turned away: not a failure.
                    && !line.contains("the database system is starting up")
                    && !line.contains("the database system is not yet accepting connections")
                {
                    let _ = ready_tx.send(Err(line));
                }
            }
        });
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => self.server = Some(child),
            other => {
                let _ = child.kill();
                panic!("PostgreSQL did not start: {other:?}");
            }
        }
    }

    /// Stops the server (fast shutdown), keeping its data for `resume`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // A paused server must run again to shut down.
            signal(&with_children(child.id()), "-CONT");
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Stops the server in immediate mode (`pg_ctl stop -m immediate`): a crash, with recovery
    /// on the next `resume`.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.server.take() {
            signal(&[child.id()], "-QUIT");
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server and every backend, as a stalled host would.
    pub fn pause(&self, frozen: bool) {
        if let Some(child) = &self.server {
            signal(
                &with_children(child.id()),
                if frozen { "-STOP" } else { "-CONT" },
            );
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub async fn create_database(&self) -> String {
        use sqlx::Connection;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connecting as postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        self.url(&name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_user(command: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = ids {
        command.uid(uid).gid(gid);
    }
    command
}

/// `PG_BIN`, else the newest /usr/lib/postgresql/*/bin, else the directory of `initdb` on PATH.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(newest) = versions.pop() {
        return newest;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists())
        .expect("PostgreSQL server binaries (apt-get install postgresql, or set PG_BIN)")
}

/// The initdb'd template for this PostgreSQL version, made once and renamed into place whole, so
/// concurrent test processes never see half of one.
fn template(bin: &Path, run_as: Option<(u32, u32)>) -> PathBuf {
    let version = bin
        .parent()
        .and_then(|v| v.file_name())
        .and_then(|v| v.to_str())
        .unwrap_or("pg")
        .to_owned();
    let template = std::env::temp_dir().join(format!("baby-discord-pg-template-{version}"));
    if template.join("data").join("PG_VERSION").exists() {
        return template;
    }
    let building = std::env::temp_dir().join(format!(
        "baby-discord-pg-template-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir(&building).unwrap();
    if let Some(ids) = run_as {
        chown_tree(&building, ids);
    }
    let status = as_user(
        Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(building.join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdout(Stdio::null()),
        run_as,
    )
    .status()
    .expect("running initdb");
    assert!(status.success(), "initdb failed");
    if std::fs::rename(&building, &template).is_err() {
        // Another test process won the race; use its template.
        let _ = std::fs::remove_dir_all(&building);
    }
    template
}
