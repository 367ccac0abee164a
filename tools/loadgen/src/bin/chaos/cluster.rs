//! The system under test: one PostgreSQL, one Valkey and N replicas of the server, all on
//! loopback in one temporary directory. Each replica reaches both services through proxies of its
//! own ([`Proxy`]), so one replica can be cut off while the others are not. Every process here
//! was started by the checker and is stopped by it, by PID.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::history::{Event, History};
use crate::proxy::Proxy;

/// How long a service or replica may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Settings {
    pub server: PathBuf,
    pub replicas: usize,
    pub presence_ttl_secs: u64,
    pub fsync: bool,
    /// Settings every replica gets besides the cluster's own (`--server-env`).
    pub server_env: Vec<(String, String)>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub pg: Mutex<Postgres>,
    pub valkey: Mutex<Valkey>,
    pub replicas: Vec<Mutex<Replica>>,
    pub pg_proxies: Vec<Proxy>,
    pub valkey_proxies: Vec<Proxy>,
    /// Each replica's client-facing addresses (fixed across restarts): TCP, HTTP.
    pub addrs: Vec<(SocketAddr, SocketAddr)>,
}

impl Cluster {
    pub async fn start(settings: &Settings) -> anyhow::Result<Arc<Cluster>> {
        let dir = std::env::temp_dir().join(format!("chaos-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut pg = Postgres::init(&dir, settings.fsync)?;
        pg.start().await?;
        pg.psql("postgres", "CREATE DATABASE chat").await?;
        let mut valkey = Valkey::new(&dir)?;
        valkey.start().await?;
        let (mut pg_proxies, mut valkey_proxies, mut replicas, mut addrs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for index in 0..settings.replicas {
            let pg_proxy = Proxy::start(pg.addr()).await?;
            let valkey_proxy = Proxy::start(valkey.addr()).await?;
            let (tcp, http) = (free_addr()?, free_addr()?);
            let env = vec![
                ("BIND_ADDRESS", "127.0.0.1".to_owned()),
                ("TCP_PORT", tcp.port().to_string()),
                ("HTTP_PORT", http.port().to_string()),
                ("INSTANCE_ID", format!("replica-{index}")),
                (
                    "DATABASE_URL",
                    format!("postgres://postgres@{}/chat", pg_proxy.addr),
                ),
                ("VALKEY_URL", format!("redis://{}", valkey_proxy.addr)),
                ("PRESENCE_TTL_SECS", settings.presence_ttl_secs.to_string()),
                ("SHUTDOWN_GRACE_SECS", "5".to_owned()),
                ("RATE_LIMIT_PER_SEC", "1000".to_owned()),
                ("RATE_LIMIT_BURST", "1000".to_owned()),
                ("LOG_FORMAT", "json".to_owned()),
                ("LOG_LEVEL", "info".to_owned()),
            ];
            replicas.push(Mutex::new(Replica {
                server: settings.server.clone(),
                env: env
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .chain(settings.server_env.iter().cloned())
                    .collect(),
                tcp,
                log: dir.join(format!("replica-{index}.log")),
                child: None,
                desired_up: true,
            }));
            addrs.push((tcp, http));
            pg_proxies.push(pg_proxy);
            valkey_proxies.push(valkey_proxy);
        }
        let cluster = Arc::new(Cluster {
            dir,
            pg: Mutex::new(pg),
            valkey: Mutex::new(valkey),
            replicas,
            pg_proxies,
            valkey_proxies,
            addrs,
        });
        for replica in &cluster.replicas {
            replica.lock().await.start().await?;
        }
        Ok(cluster)
    }

    /// Keeps replica `index` running while it is wanted, restarting it after it exits on its own
    /// (as a kubelet would), until `stop`.
    pub async fn supervise(
        self: Arc<Self>,
        index: usize,
        history: Arc<History>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut retry_at = Instant::now();
        while stop.run_until_cancelled(tick.tick()).await.is_some() {
            let mut replica = self.replicas[index].lock().await;
            if !replica.desired_up {
                continue;
            }
            if let Some(status) = replica.exited() {
                history.push(Event::Note {
                    text: format!("replica-{index} exited on its own ({status}); restarting"),
                });
            }
            if replica.child.is_none()
                && Instant::now() >= retry_at
                && let Err(e) = replica.start().await
            {
                history.push(Event::Note {
                    text: format!("replica-{index} did not start: {e:#}"),
                });
                retry_at = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// Every stored message: (room, seq, content, nickname), by room and seq.
    pub async fn stored_messages(&self) -> anyhow::Result<Vec<(String, i64, String, String)>> {
        let out = self
            .pg
            .lock()
            .await
            .psql(
                "chat",
                "SELECT r.name, m.seq, m.content, m.nickname FROM messages m \
                 JOIN rooms r ON r.id = m.room_id ORDER BY 1, 2",
            )
            .await?;
        out.lines()
            .map(|line| {
                let mut fields = line.splitn(4, '\t');
                let mut next = || fields.next().context("a short row");
                Ok((
                    next()?.to_owned(),
                    next()?.parse()?,
                    next()?.to_owned(),
                    next()?.to_owned(),
                ))
            })
            .collect()
    }

    /// Stops everything, replicas first.
    pub async fn stop(&self) {
        for replica in &self.replicas {
            let mut replica = replica.lock().await;
            replica.desired_up = false;
            replica
                .signal_and_wait("-KILL", Duration::from_secs(5))
                .await;
        }
        self.valkey.lock().await.kill().await;
        self.pg.lock().await.stop_fast().await;
    }
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Sends `signal` (e.g. "-STOP") to `pids`.
pub fn signal(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// `pid` and every process whose parent it is (PostgreSQL's backends and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid)
            && let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok())
        {
            pids.push(child);
        }
    }
    pids
}

async fn wait_for_port(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("exited before listening ({status})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr}")
}

pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    pub port: u16,
    run_as: Option<(u32, u32)>,
    fsync: bool,
    child: Option<Child>,
}

impl Postgres {
    fn init(dir: &Path, fsync: bool) -> anyhow::Result<Postgres> {
        let bin = pg_bin()?;
        let run_as = running_as_root()
            .then(|| user_ids("postgres").context("a 'postgres' system user"))
            .transpose()?;
        let pg_dir = dir.join("pg");
        std::fs::create_dir_all(&pg_dir)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pg_dir, Some(uid), Some(gid))?;
        }
        let data = pg_dir.join("data");
        let status = as_user(std::process::Command::new(bin.join("initdb")), run_as)
            .arg("-D")
            .arg(&data)
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
            .stdout(Stdio::null())
            .status()
            .context("running initdb")?;
        anyhow::ensure!(status.success(), "initdb failed");
        Ok(Postgres {
            bin,
            data,
            dir: pg_dir,
            port: free_addr()?.port(),
            run_as,
            fsync,
            child: None,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        let mut command = as_user(
            std::process::Command::new(self.bin.join("postgres")),
            self.run_as,
        );
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .args([
                "-c",
                &format!("fsync={}", if self.fsync { "on" } else { "off" }),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = Command::from(command).kill_on_drop(true).spawn()?;
        let deadline = Instant::now() + START_TIMEOUT;
        // Crash recovery runs before it accepts connections.
        loop {
            if self.psql("postgres", "SELECT 1").await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("PostgreSQL exited while starting ({status})");
            }
            anyhow::ensure!(Instant::now() < deadline, "PostgreSQL did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// An immediate-mode stop, as `pg_ctl stop -m immediate` does it: no checkpoint, crash
    /// recovery on the next start.
    pub async fn crash(&mut self) {
        if let Some(pid) = self.pid() {
            signal(&[pid], "-QUIT");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
    }

    async fn stop_fast(&mut self) {
        if let Some(pid) = self.pid() {
            signal(&with_children(pid), "-CONT");
            signal(&[pid], "-INT");
        }
        if let Some(mut child) = self.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server and every backend.
    pub fn pause(&self, frozen: bool) {
        if let Some(pid) = self.pid() {
            signal(&with_children(pid), if frozen { "-STOP" } else { "-CONT" });
        }
    }

    pub async fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                database,
                "-X",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "2")
            .stdin(Stdio::null())
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

pub struct Valkey {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Valkey {
    fn new(dir: &Path) -> anyhow::Result<Valkey> {
        Ok(Valkey {
            dir: dir.to_owned(),
            port: free_addr()?.port(),
            child: None,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts on its port, empty: no persistence, so a restart loses every key, as a cache would.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let binary = ["valkey-server", "redis-server"]
            .into_iter()
            .find(|b| {
                std::process::Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
            .context("valkey-server or redis-server")?;
        let mut child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !ping(self.addr()).await {
            if let Some(status) = child.try_wait()? {
                bail!("Valkey exited while starting ({status})");
            }
            anyhow::ensure!(Instant::now() < deadline, "Valkey did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal(&[pid], "-CONT");
            }
            let _ = child.kill().await;
        }
    }

    pub fn pause(&self, frozen: bool) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            signal(&[pid], if frozen { "-STOP" } else { "-CONT" });
        }
    }
}

async fn ping(addr: SocketAddr) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
    else {
        return false;
    };
    let mut reply = [0; 7];
    stream.write_all(b"PING\r\n").await.is_ok()
        && tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut reply))
            .await
            .is_ok_and(|r| r.is_ok())
        && &reply == b"+PONG\r\n"
}

pub struct Replica {
    server: PathBuf,
    env: Vec<(String, String)>,
    tcp: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    /// Whether the supervisor should keep it running (false while a fault holds it down).
    pub desired_up: bool,
}

impl Replica {
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&self.server)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.server.display()))?;
        if let Err(e) = wait_for_port(self.tcp, &mut child).await {
            let _ = child.kill().await;
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// The exit status, if it has exited (then it is forgotten).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Sends `signal` and waits up to `patience` for the exit; then SIGKILL. Returns how long the
    /// exit took, or `None` when it had to be killed (or was not running).
    pub async fn signal_and_wait(
        &mut self,
        signal_name: &str,
        patience: Duration,
    ) -> Option<Duration> {
        let mut child = self.child.take()?;
        let began = Instant::now();
        if let Some(pid) = child.id() {
            signal(&[pid], signal_name);
        }
        match tokio::time::timeout(patience, child.wait()).await {
            Ok(_) => Some(began.elapsed()),
            Err(_) => {
                let _ = child.kill().await;
                None
            }
        }
    }
}

fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries (apt-get install postgresql, or set PG_BIN)")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/*/bin")
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name))
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

fn as_user(mut command: std::process::Command, ids: Option<(u32, u32)>) -> std::process::Command {
    if let Some((uid, gid)) = ids {
        command.uid(uid).gid(gid);
    }
    command
}
