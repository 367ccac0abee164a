//! A throwaway Valkey (or Redis, where Valkey is not packaged) server with no persistence.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::free_port;

const READY: &str = "Ready to accept connections";

pub struct Valkey {
    dir: PathBuf,
    pub port: u16,
    server: Option<Child>,
}

impl Valkey {
    pub fn start() -> Valkey {
        let dir = std::env::temp_dir().join(format!(
            "baby-discord-valkey-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&dir).unwrap();
        let mut valkey = Valkey {
            dir,
            port: free_port(),
            server: None,
        };
        valkey.resume();
        valkey
    }

    /// Starts (again) on the same port, empty: a restart loses everything, as a cache would.
    pub fn resume(&mut self) {
        let binary = ["valkey-server", "redis-server"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("valkey-server or redis-server (apt-get install redis-server)");
        let mut child = Command::new(binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the Valkey server");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (ready_tx, ready_rx) = mpsc::channel();
        // Its log is the readiness signal; draining it keeps the server from blocking on a full pipe.
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if line.contains(READY) {
                    let _ = ready_tx.send(());
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("the Valkey server did not start");
        }
        self.server = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            super::signal(&[child.id()], "-CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    pub fn pause(&self, frozen: bool) {
        if let Some(child) = &self.server {
            super::signal(&[child.id()], if frozen { "-STOP" } else { "-CONT" });
        }
    }

    /// Runs one command (inline syntax) and returns the first line of its reply.
    pub fn command(&self, command: &str) -> String {
        use std::io::Write;
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        conn.write_all(format!("{command}\r\n").as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(conn).read_line(&mut reply).unwrap();
        reply.trim_end().to_owned()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
