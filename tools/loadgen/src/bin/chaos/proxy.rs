//! A fault-injecting TCP proxy: what stands between one replica and PostgreSQL or Valkey.
//!
//! Why a proxy rather than network namespaces: it cuts one replica off from one service while the
//! others keep theirs, needs no root, no `ip netns`/`iptables`, and runs the same on a laptop, in
//! CI and in a container. A *partition* stalls both directions of every connection and holds new
//! ones unanswered — what dropped packets look like to both ends (timeouts, not resets) — and when
//! it heals, the stalled bytes flow again, as TCP retransmission would deliver them.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    partitioned: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (partitioned, watching) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, target, watching.clone()));
            }
        });
        Ok(Proxy { addr, partitioned })
    }

    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }
}

/// Waits while the link is cut. False when the proxy is gone.
async fn until_healed(link: &mut watch::Receiver<bool>) -> bool {
    while *link.borrow_and_update() {
        if link.changed().await.is_err() {
            return false;
        }
    }
    true
}

async fn forward(client: TcpStream, target: SocketAddr, mut link: watch::Receiver<bool>) {
    if !until_healed(&mut link).await {
        return;
    }
    // The service is down (a crash, a restart): the client sees the refusal as a closed connection.
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(
        pump(client_read, upstream_write, link.clone()),
        pump(upstream_read, client_write, link),
    );
}

/// Copies one direction, holding every byte while the link is cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<bool>) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        if !until_healed(&mut link).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            // Cut (or healed) while waiting: look again. Reading a socket is cancel-safe.
            _ = link.changed() => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !until_healed(&mut link).await || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
