//! The nemesis: a seeded schedule of faults, printed before the run so that a run can be replayed
//! with the same seed, and the code that inflicts each one on the cluster.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::history::{Event, History};

/// What `--faults` may name.
pub const KINDS: &[&str] = &[
    "kill",
    "rolling-restart",
    "pg-crash",
    "valkey-restart",
    "pg-pause",
    "valkey-pause",
    "pg-partition",
    "valkey-partition",
];

#[derive(Debug, Clone)]
pub enum Fault {
    /// SIGKILL a replica; start it again after `down`.
    Kill {
        replica: usize,
        down: Duration,
    },
    /// SIGTERM each replica in turn, waiting for it to drain, exit and start again.
    RollingRestart,
    /// PostgreSQL stopped in immediate mode (a crash), started again after `down`.
    PgCrash {
        down: Duration,
    },
    /// Valkey killed and started again empty after `down`.
    ValkeyRestart {
        down: Duration,
    },
    /// PostgreSQL and every backend frozen (SIGSTOP) for `time`.
    PgPause {
        time: Duration,
    },
    ValkeyPause {
        time: Duration,
    },
    /// One replica cut off from PostgreSQL for `time`; the others keep it.
    PgPartition {
        replica: usize,
        time: Duration,
    },
    ValkeyPartition {
        replica: usize,
        time: Duration,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: &Duration| format!("{:.1}s", d.as_secs_f64());
        match self {
            Fault::Kill { replica, down } => {
                write!(f, "kill -9 replica-{replica}, down {}", s(down))
            }
            Fault::RollingRestart => write!(f, "rolling restart (SIGTERM each replica in turn)"),
            Fault::PgCrash { down } => {
                write!(f, "PostgreSQL crash (immediate stop), down {}", s(down))
            }
            Fault::ValkeyRestart { down } => write!(f, "Valkey restart (empty), down {}", s(down)),
            Fault::PgPause { time } => write!(f, "PostgreSQL paused {}", s(time)),
            Fault::ValkeyPause { time } => write!(f, "Valkey paused {}", s(time)),
            Fault::PgPartition { replica, time } => {
                write!(f, "replica-{replica} cut off from PostgreSQL {}", s(time))
            }
            Fault::ValkeyPartition { replica, time } => {
                write!(f, "replica-{replica} cut off from Valkey {}", s(time))
            }
        }
    }
}

pub struct Step {
    pub at: Duration,
    pub fault: Fault,
}

/// Faults one after another from `warmup` until `until`, each of a kind in `kinds`, starting on
/// average every `every`.
pub fn plan(
    seed: u64,
    kinds: &[String],
    replicas: usize,
    warmup: Duration,
    until: Duration,
    every: Duration,
) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ms = |lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    let mut steps = Vec::new();
    let mut at = warmup;
    let mut pick = 0usize;
    while at < until && !kinds.is_empty() {
        // Seeded as the rest: the kind, then its parameters.
        pick = (pick + 1 + ms(0, 1_000).as_millis() as usize) % kinds.len();
        let replica = ms(0, replicas as u64 - 1).as_millis() as usize;
        let fault = match kinds[pick].as_str() {
            "kill" => Fault::Kill {
                replica,
                down: ms(500, 4_000),
            },
            "rolling-restart" => Fault::RollingRestart,
            "pg-crash" => Fault::PgCrash {
                down: ms(200, 3_000),
            },
            "valkey-restart" => Fault::ValkeyRestart {
                down: ms(200, 3_000),
            },
            "pg-pause" => Fault::PgPause {
                time: ms(1_000, 5_000),
            },
            "valkey-pause" => Fault::ValkeyPause {
                time: ms(1_000, 5_000),
            },
            "pg-partition" => Fault::PgPartition {
                replica,
                time: ms(1_000, 6_000),
            },
            _ => Fault::ValkeyPartition {
                replica,
                time: ms(1_000, 6_000),
            },
        };
        let lasts = match &fault {
            Fault::Kill { down, .. } | Fault::PgCrash { down } | Fault::ValkeyRestart { down } => {
                *down
            }
            Fault::PgPause { time } | Fault::ValkeyPause { time } => *time,
            Fault::PgPartition { time, .. } | Fault::ValkeyPartition { time, .. } => *time,
            Fault::RollingRestart => Duration::from_secs(3 * replicas as u64),
        };
        steps.push(Step { at, fault });
        at += lasts + every / 2 + ms(0, every.as_millis() as u64);
    }
    steps
}

/// Inflicts the faults at their times (each waits for the one before to end), until the plan is
/// done or `stop`. Every fault is healed before this returns.
pub async fn run(
    plan: Vec<Step>,
    cluster: Arc<Cluster>,
    history: Arc<History>,
    begun: Instant,
    stop: CancellationToken,
) {
    for step in plan {
        if stop
            .run_until_cancelled(tokio::time::sleep_until(begun + step.at))
            .await
            .is_none()
        {
            return;
        }
        let name = step.fault.to_string();
        eprintln!("chaos: {:>6.1}s  {name}", begun.elapsed().as_secs_f64());
        history.push(Event::Fault {
            name: name.clone(),
            phase: "start".into(),
        });
        inflict(&step.fault, &cluster, &history).await;
        history.push(Event::Fault {
            name,
            phase: "end".into(),
        });
    }
}

async fn inflict(fault: &Fault, cluster: &Cluster, history: &History) {
    match fault {
        Fault::Kill { replica, down } => {
            let mut r = cluster.replicas[*replica].lock().await;
            r.desired_up = false;
            r.signal_and_wait("-KILL", Duration::from_secs(5)).await;
            drop(r);
            tokio::time::sleep(*down).await;
            cluster.replicas[*replica].lock().await.desired_up = true;
        }
        Fault::RollingRestart => {
            for (i, replica) in cluster.replicas.iter().enumerate() {
                let mut r = replica.lock().await;
                r.desired_up = false;
                // SHUTDOWN_GRACE_SECS is 5: a drain must end within it (1 s of slack).
                match r.signal_and_wait("-TERM", Duration::from_secs(6)).await {
                    Some(took) => history.push(Event::Note {
                        text: format!("replica-{i} drained in {:.2}s", took.as_secs_f64()),
                    }),
                    None => history.push(Event::Note {
                        text: format!("replica-{i} did not exit within the grace period: killed"),
                    }),
                }
                r.desired_up = true;
                if let Err(e) = r.start().await {
                    history.push(Event::Note {
                        text: format!("replica-{i} did not restart: {e:#}"),
                    });
                }
            }
        }
        Fault::PgCrash { down } => {
            cluster.pg.lock().await.crash().await;
            tokio::time::sleep(*down).await;
            restart_pg(cluster, history).await;
        }
        Fault::ValkeyRestart { down } => {
            cluster.valkey.lock().await.kill().await;
            tokio::time::sleep(*down).await;
            if let Err(e) = cluster.valkey.lock().await.start().await {
                history.push(Event::Note {
                    text: format!("Valkey did not restart: {e:#}"),
                });
            }
        }
        Fault::PgPause { time } => {
            cluster.pg.lock().await.pause(true);
            tokio::time::sleep(*time).await;
            cluster.pg.lock().await.pause(false);
        }
        Fault::ValkeyPause { time } => {
            cluster.valkey.lock().await.pause(true);
            tokio::time::sleep(*time).await;
            cluster.valkey.lock().await.pause(false);
        }
        Fault::PgPartition { replica, time } => {
            cluster.pg_proxies[*replica].partition();
            tokio::time::sleep(*time).await;
            cluster.pg_proxies[*replica].heal();
        }
        Fault::ValkeyPartition { replica, time } => {
            cluster.valkey_proxies[*replica].partition();
            tokio::time::sleep(*time).await;
            cluster.valkey_proxies[*replica].heal();
        }
    }
}

async fn restart_pg(cluster: &Cluster, history: &History) {
    for _ in 0..5 {
        match cluster.pg.lock().await.start().await {
            Ok(()) => return,
            Err(e) => history.push(Event::Note {
                text: format!("PostgreSQL did not restart: {e:#}"),
            }),
        }
    }
}
