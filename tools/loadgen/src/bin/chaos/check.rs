//! The checker: reads the history and the store's final contents, and names every anomaly with
//! the events behind it. It never asks the servers anything; an operation whose outcome the
//! client did not learn (`Unknown`) is counted neither as a success nor as a failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::history::{ClientId, Event, Op, Record, Seg, SegKind};

/// The invariants, numbered as in the issue that asked for them.
pub const INVARIANTS: &[(u8, &str)] = &[
    (
        1,
        "every acknowledged message is in the store exactly once, with a unique seq in its room",
    ),
    (
        2,
        "no two different messages are ever shown with the same (room, seq)",
    ),
    (
        3,
        "a receiver sees each room's messages in seq order, without a gap or duplicate (after a resume: no gap, or an explicit reset)",
    ),
    (
        4,
        "a failed send is never stored or delivered; a retried one is stored at most once",
    ),
    (
        5,
        "no two live sessions hold one nickname; a session's /nick and /join both take effect",
    ),
    (6, "presence converges within PRESENCE_TTL after each fault"),
    (
        7,
        "after each fault, every replica acknowledges sends again",
    ),
    (
        8,
        "a direct message reaches a recipient connected throughout exactly once",
    ),
    (
        9,
        "no client is cut off, and no reply takes 10 s, while no fault is in progress",
    ),
];

/// How long after a fault's end its effects may still cut a client off (a reconnect storm, a
/// breaker still open).
const AFTERMATH: u64 = 5_000_000;

/// How long after a fault ends a replica may take to acknowledge a send again.
const AVAILABILITY_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Serialize)]
pub struct Anomaly {
    pub invariant: u8,
    pub what: String,
    /// The records behind it.
    pub events: Vec<Value>,
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub sent: usize,
    pub acknowledged: usize,
    pub failed: usize,
    pub unknown: usize,
    pub shown: usize,
    pub segments: usize,
    pub faults: usize,
    pub probes: usize,
    pub dms: usize,
    pub stored: usize,
    /// Acknowledged messages retention removed from the store before the end.
    pub retired: usize,
    /// Per fault: the slowest replica's time from the fault's end to its next acknowledged send.
    pub recovery_secs: Vec<(String, Option<f64>)>,
    /// Per fault: the slowest replica's time from the fault's end until its presence converged.
    pub presence_secs: Vec<(String, Option<f64>)>,
}

pub struct Store {
    pub rows: Vec<(String, i64, String, String)>,
}

#[derive(Default)]
struct OpInfo<'a> {
    sends: Vec<&'a Record>,
    acks: Vec<&'a Record>,
    fails: Vec<&'a Record>,
    unknowns: Vec<&'a Record>,
    dm: Option<&'a Record>,
}

fn ev(record: &Record) -> Value {
    serde_json::to_value(record).unwrap_or(Value::Null)
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

pub fn check(records: &[Record], store: &Store, presence_ttl: Duration) -> (Vec<Anomaly>, Stats) {
    let mut anomalies = Vec::new();
    let mut stats = Stats {
        stored: store.rows.len(),
        ..Stats::default()
    };
    let mut by_content: HashMap<&str, Vec<(&str, i64)>> = HashMap::new();
    let mut by_seq: HashMap<(&str, i64), &str> = HashMap::new();
    let mut final_seq: HashMap<String, i64> = HashMap::new();
    let mut first_seq: HashMap<String, i64> = HashMap::new();
    for (room, seq, content, _) in &store.rows {
        by_content.entry(content).or_default().push((room, *seq));
        by_seq.insert((room, *seq), content);
        let last = final_seq.entry(room.to_lowercase()).or_insert(0);
        *last = (*last).max(*seq);
        let first = first_seq.entry(room.to_lowercase()).or_insert(i64::MAX);
        *first = (*first).min(*seq);
    }
    // The seq a message was acknowledged or shown with, where a client saw one.
    let mut known_seq: HashMap<&str, (String, i64)> = HashMap::new();
    for record in records {
        if let Event::Shown {
            room,
            seq: Some(seq),
            content,
            ..
        } = &record.event
        {
            known_seq.insert(content, (room.to_lowercase(), *seq));
        }
    }
    // Retention removes a room's oldest messages (RETENTION_PER_ROOM): one missing from the
    // store with a seq below the oldest kept was removed by it, not lost.
    let retired = |content: &str| {
        known_seq
            .get(content)
            .is_some_and(|(room, seq)| first_seq.get(room).is_some_and(|first| seq < first))
    };

    let mut ops: BTreeMap<Op, OpInfo> = BTreeMap::new();
    let mut segments: BTreeMap<Seg, (&Record, Vec<&Record>, Option<&Record>)> = BTreeMap::new();
    for record in records {
        match &record.event {
            Event::Send { op, .. } => ops.entry(*op).or_default().sends.push(record),
            Event::Ack { op, .. } => ops.entry(*op).or_default().acks.push(record),
            Event::Fail { op, .. } => ops.entry(*op).or_default().fails.push(record),
            Event::Unknown { op, .. } => ops.entry(*op).or_default().unknowns.push(record),
            Event::Dm { op, .. } => ops.entry(*op).or_default().dm = Some(record),
            Event::Segment { seg, .. } => {
                segments.insert(*seg, (record, Vec::new(), None));
            }
            Event::Shown { seg, .. } | Event::Reset { seg } => {
                if let Some(s) = segments.get_mut(seg) {
                    s.1.push(record);
                }
                stats.shown += usize::from(matches!(record.event, Event::Shown { .. }));
            }
            Event::SegmentEnd { seg, .. } => {
                if let Some(s) = segments.get_mut(seg) {
                    s.2 = Some(record);
                }
            }
            Event::Probe { .. } => stats.probes += 1,
            Event::Fault { phase, .. } if phase == "start" => stats.faults += 1,
            _ => {}
        }
    }
    stats.segments = segments.len();

    // Everything shown, by content: what failed sends must never be.
    let mut shown_contents: HashMap<&str, Vec<&Record>> = HashMap::new();
    for record in records {
        if let Event::Shown { content, .. } = &record.event {
            shown_contents.entry(content).or_default().push(record);
        }
    }

    // 1 and 4: acknowledged messages stored once, failed ones never, retried ones at most once.
    for info in ops.values() {
        let Some(send) = info.sends.first() else {
            continue;
        };
        let Event::Send { content, .. } = &send.event else {
            continue;
        };
        stats.sent += 1;
        let stored = by_content.get(content.as_str()).map_or(0, Vec::len);
        let mut evidence: Vec<Value> = info
            .sends
            .iter()
            .chain(&info.acks)
            .chain(&info.fails)
            .chain(&info.unknowns)
            .map(|r| ev(r))
            .collect();
        if !info.acks.is_empty() {
            stats.acknowledged += 1;
            if stored == 0 && retired(content) {
                stats.retired += 1;
            } else if stored != 1 {
                evidence.push(json!({ "stored": by_content.get(content.as_str()) }));
                anomalies.push(Anomaly {
                    invariant: 1,
                    what: if stored == 0 {
                        format!("acknowledged message {content} is not in the store")
                    } else {
                        format!("acknowledged message {content} is stored {stored} times")
                    },
                    events: evidence,
                });
            }
        } else if !info.fails.is_empty() && info.unknowns.is_empty() {
            stats.failed += 1;
            if stored > 0 || shown_contents.contains_key(content.as_str()) {
                evidence.extend(
                    shown_contents
                        .get(content.as_str())
                        .into_iter()
                        .flatten()
                        .take(3)
                        .map(|r| ev(r)),
                );
                anomalies.push(Anomaly {
                    invariant: 4,
                    what: format!(
                        "send of {content} was answered with an error, yet it is {}",
                        if stored > 0 { "stored" } else { "shown" }
                    ),
                    events: evidence,
                });
            }
        } else {
            stats.unknown += 1;
            if stored > 1 {
                anomalies.push(Anomaly {
                    invariant: 4,
                    what: format!("{content}, sent with retries, is stored {stored} times"),
                    events: evidence,
                });
            }
        }
    }

    // 2: one message per (room, seq), across every observation and the store.
    let mut observed: HashMap<(String, i64), HashMap<String, &Record>> = HashMap::new();
    for record in records {
        match &record.event {
            Event::Shown {
                room,
                seq: Some(seq),
                content,
                ..
            } => {
                observed
                    .entry((room.to_lowercase(), *seq))
                    .or_default()
                    .entry(content.clone())
                    .or_insert(record);
            }
            Event::Ack {
                op,
                room,
                seq: Some(seq),
            } => {
                if let Some(Event::Send { content, .. }) =
                    ops.get(op).and_then(|i| i.sends.first()).map(|r| &r.event)
                {
                    observed
                        .entry((room.to_lowercase(), *seq))
                        .or_default()
                        .entry(content.clone())
                        .or_insert(record);
                }
            }
            _ => {}
        }
    }
    let store_rooms: HashMap<String, &str> = store
        .rows
        .iter()
        .map(|(room, ..)| (room.to_lowercase(), room.as_str()))
        .collect();
    for ((room, seq), contents) in &observed {
        let in_store = store_rooms
            .get(room)
            .and_then(|r| by_seq.get(&(*r, *seq)))
            .copied();
        let mut all: HashSet<&str> = contents.keys().map(String::as_str).collect();
        all.extend(in_store);
        if all.len() > 1 {
            anomalies.push(Anomaly {
                invariant: 2,
                what: format!(
                    "({room}, seq {seq}) was {} — the store has {in_store:?}",
                    all.iter().copied().collect::<Vec<_>>().join(" and ")
                ),
                events: contents.values().map(|r| ev(r)).collect(),
            });
        }
    }
    for (content, shown) in &shown_contents {
        if content.starts_with('m') && !by_content.contains_key(content) && !retired(content) {
            anomalies.push(Anomaly {
                invariant: 2,
                what: format!(
                    "{content} was shown to {} receiver(s) but is not in the store",
                    shown.len()
                ),
                events: shown.iter().take(3).map(|r| ev(r)).collect(),
            });
        }
    }

    // 3: order, gaps and duplicates within each segment; the tail for segments open at the end.
    for (seg, (start, items, end)) in &segments {
        check_segment(
            *seg,
            start,
            items,
            *end,
            &by_content,
            &final_seq,
            &mut anomalies,
        );
    }

    // 5: probes that took a live client's nickname, and sessions whose updates were lost.
    check_nicknames(records, &ops, &mut anomalies);

    // 6 and 7, per fault.
    check_faults(records, presence_ttl, &mut anomalies, &mut stats);

    // 8: direct messages.
    check_dms(records, &ops, &mut anomalies, &mut stats);

    // 9: cut off in calm weather.
    let windows: Vec<(u64, u64)> = faults(records)
        .iter()
        .map(|(_, start, end)| (start.saturating_sub(1_000_000), end + AFTERMATH))
        .collect();
    let mut cut = 0;
    for record in records {
        if let Event::SegmentEnd { seg, why } = &record.event
            && [
                "connection closed",
                "no reply in time",
                "stream ended",
                "stream broke",
            ]
            .contains(&why.as_str())
            && !windows
                .iter()
                .any(|(from, to)| (*from..=*to).contains(&record.at))
        {
            cut += 1;
            if cut <= 20 {
                let start = segments.get(seg).map(|s| ev(s.0)).unwrap_or_default();
                anomalies.push(Anomaly {
                    invariant: 9,
                    what: format!(
                        "segment {seg} ended at {:.1}s ({why}) with no fault in progress",
                        secs(record.at)
                    ),
                    events: vec![start, ev(record)],
                });
            }
        }
    }

    (anomalies, stats)
}

fn check_segment(
    seg: Seg,
    start: &Record,
    items: &[&Record],
    end: Option<&Record>,
    by_content: &HashMap<&str, Vec<(&str, i64)>>,
    final_seq: &HashMap<String, i64>,
    anomalies: &mut Vec<Anomaly>,
) {
    let Event::Segment {
        kind,
        room,
        resume_from,
        resume_room,
        history,
        empty_history,
        ..
    } = &start.event
    else {
        return;
    };
    let seq_of = |content: &str| {
        by_content
            .get(content)
            .and_then(|v| (v.len() == 1).then(|| v[0].1))
    };
    // Where the segment's view begins: the last seq of the history block, or the resume position.
    let mut prev: Option<i64> = match kind {
        SegKind::Tcp if *empty_history => Some(0),
        SegKind::Tcp => history.last().and_then(|c| seq_of(c)),
        _ => *resume_from,
    };
    let mut reported = 0;
    let mut report = |what: String, events: Vec<Value>, anomalies: &mut Vec<Anomaly>| {
        // A broken segment tends to break on every later message; the first few say enough.
        reported += 1;
        if reported <= 3 {
            anomalies.push(Anomaly {
                invariant: 3,
                what,
                events,
            });
        }
    };
    // A position from another room means nothing here: the stream must say so before showing
    // anything (SPEC §4).
    let mut foreign = resume_room
        .as_ref()
        .is_some_and(|r| !r.eq_ignore_ascii_case(room));
    if foreign {
        prev = None;
    }
    let mut seen: HashSet<i64> = HashSet::new();
    for item in items {
        let (shown_room, seq, content) = match &item.event {
            Event::Reset { .. } => {
                prev = None;
                foreign = false;
                continue;
            }
            Event::Shown {
                room, seq, content, ..
            } => (room, *seq, content),
            _ => continue,
        };
        if !shown_room.eq_ignore_ascii_case(room) {
            report(
                format!("segment {seg} in {room} was shown {content} of {shown_room}"),
                vec![ev(start), ev(item)],
                anomalies,
            );
            continue;
        }
        let Some(seq) = seq.or_else(|| seq_of(content)) else {
            continue;
        };
        if foreign {
            foreign = false;
            report(
                format!(
                    "segment {seg} in {room} resumed from seq {} of {} and went on without a reset (first shown: {seq})",
                    resume_from.unwrap_or_default(),
                    resume_room.as_deref().unwrap_or_default()
                ),
                vec![ev(start), ev(item)],
                anomalies,
            );
        }
        if !seen.insert(seq) {
            report(
                format!("segment {seg} in {room} was shown seq {seq} ({content}) twice"),
                vec![ev(start), ev(item)],
                anomalies,
            );
            continue;
        }
        match prev {
            Some(p) if seq == p + 1 => {}
            Some(p) if seq <= p => {
                report(
                    format!(
                        "segment {seg} in {room} was shown seq {seq} ({content}) after seq {p}"
                    ),
                    vec![ev(start), ev(item)],
                    anomalies,
                );
            }
            Some(p) => {
                report(
                    format!(
                        "segment {seg} in {room} skipped seqs {}..={} (next shown: {seq}, {content})",
                        p + 1,
                        seq - 1
                    ),
                    vec![ev(start), ev(item)],
                    anomalies,
                );
            }
            None => {}
        }
        prev = Some(prev.map_or(seq, |p| p.max(seq)));
    }
    let open_at_end = end
        .is_some_and(|e| matches!(&e.event, Event::SegmentEnd { why, .. } if why == "end of run"));
    if open_at_end
        && let (Some(last), Some(&tail)) = (prev, final_seq.get(&room.to_lowercase()))
        && last < tail
    {
        let mut events = vec![ev(start)];
        events.extend(items.last().map(|r| ev(r)));
        report(
            format!("segment {seg} in {room}, connected to the end, last saw seq {last} of {tail}"),
            events,
            anomalies,
        );
    }
}

/// Intervals during which each nickname (case-folded) was held by some client, by their account
/// — except that an HTTP session without a stream is lost the moment Valkey restarts empty (its
/// client learns it at its next request).
fn holdings(records: &[Record]) -> HashMap<String, Vec<(u64, u64, ClientId)>> {
    let restarts: Vec<u64> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Fault { name, phase }
                if phase == "start" && name.starts_with("Valkey restart") =>
            {
                Some(r.at)
            }
            _ => None,
        })
        .collect();
    let mut open: HashMap<(String, ClientId), (u64, bool)> = HashMap::new();
    let mut held: HashMap<String, Vec<(u64, u64, ClientId)>> = HashMap::new();
    let mut close = |nick: String, client: ClientId, (since, lost): (u64, bool), end: u64| {
        let end = if lost {
            restarts
                .iter()
                .copied()
                .filter(|t| *t >= since)
                .fold(end, u64::min)
        } else {
            end
        };
        held.entry(nick).or_default().push((since, end, client));
    };
    for record in records {
        match &record.event {
            Event::Login {
                client,
                nick,
                http,
                stream,
            } => {
                open.insert(
                    (nick.to_lowercase(), *client),
                    (record.at, *http && !*stream),
                );
            }
            Event::Logout { client, nick, .. } => {
                let key = (nick.to_lowercase(), *client);
                if let Some(start) = open.remove(&key) {
                    close(key.0, key.1, start, record.at);
                }
            }
            _ => {}
        }
    }
    for ((nick, client), start) in open {
        close(nick, client, start, u64::MAX);
    }
    held
}

fn check_nicknames(records: &[Record], ops: &BTreeMap<Op, OpInfo>, anomalies: &mut Vec<Anomaly>) {
    let held = holdings(records);
    // A probe that got a nickname its client held from half a second before to half a second after.
    const MARGIN: u64 = 500_000;
    for record in records {
        if let Event::Probe {
            nick,
            granted: true,
            ..
        } = &record.event
            && let Some(holder) = held
                .get(&nick.to_lowercase())
                .into_iter()
                .flatten()
                .find(|(from, to, _)| from + MARGIN <= record.at && record.at + MARGIN <= *to)
        {
            anomalies.push(Anomaly {
                invariant: 5,
                what: format!(
                    "a newcomer was given {nick} while client {} held it (since {:.1}s)",
                    holder.2,
                    secs(holder.0)
                ),
                events: vec![ev(record)],
            });
        }
    }
    // Each HTTP client's latest /join and nickname, and whether its next message carried them.
    let mut joined: HashMap<ClientId, (&str, &Record)> = HashMap::new();
    let mut nick: HashMap<ClientId, &str> = HashMap::new();
    let shown_user: HashMap<&str, Vec<&Record>> =
        records.iter().fold(HashMap::new(), |mut m, r| {
            if let Event::Shown { content, .. } = &r.event {
                m.entry(content.as_str()).or_default().push(r);
            }
            m
        });
    for record in records {
        match &record.event {
            Event::Joined { client, room } => {
                joined.insert(*client, (room, record));
            }
            Event::Login {
                client,
                nick: n,
                http: true,
                ..
            } => {
                nick.insert(*client, n);
            }
            Event::Ack {
                op,
                room,
                seq: Some(_),
            } => {
                let Some(Event::Send {
                    client, content, ..
                }) = ops.get(op).and_then(|i| i.sends.first()).map(|r| &r.event)
                else {
                    continue;
                };
                if let Some((expected, join)) = joined.get(client)
                    && !expected.eq_ignore_ascii_case(room)
                {
                    anomalies.push(Anomaly {
                        invariant: 5,
                        what: format!("client {client}'s {content} went to {room}, though its last /join answered \"Joined room: {expected}\""),
                        events: vec![ev(join), ev(record)],
                    });
                }
                if let Some(name) = nick.get(client) {
                    for shown in shown_user.get(content.as_str()).into_iter().flatten() {
                        if let Event::Shown { user, .. } = &shown.event
                            && !user.eq_ignore_ascii_case(name)
                        {
                            anomalies.push(Anomaly {
                                invariant: 5,
                                what: format!("client {client}'s {content} was shown from {user}, though /nick had answered {name}"),
                                events: vec![ev(record), ev(shown)],
                            });
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The faults' (name, start, end) times.
fn faults(records: &[Record]) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut started: Option<(String, u64)> = None;
    for record in records {
        if let Event::Fault { name, phase } = &record.event {
            match phase.as_str() {
                "start" => started = Some((name.clone(), record.at)),
                _ => {
                    if let Some((name, at)) = started.take() {
                        out.push((name, at, record.at));
                    }
                }
            }
        }
    }
    out
}

fn check_faults(
    records: &[Record],
    ttl: Duration,
    anomalies: &mut Vec<Anomaly>,
    stats: &mut Stats,
) {
    let faults = faults(records);
    let held = holdings(records);
    let replicas = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Send { replica, .. } | Event::Presence { replica, .. } => Some(*replica + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let run_end = records.last().map_or(0, |r| r.at);
    let ttl_us = ttl.as_micros() as u64;
    // TCP clients only: their presence belongs to a replica, HTTP sessions' to nobody.
    let tcp_clients: HashSet<ClientId> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Login {
                client,
                http: false,
                ..
            } => Some(*client),
            _ => None,
        })
        .collect();
    let present = |nick: &str, from: u64, to: u64| {
        held.get(nick)
            .into_iter()
            .flatten()
            .any(|(a, b, c)| tcp_clients.contains(c) && *a <= from && to <= *b)
    };
    let absent_since = |nick: &str, t: u64| -> bool {
        let spans = held.get(nick).map(Vec::as_slice).unwrap_or_default();
        !spans.is_empty()
            && spans
                .iter()
                .all(|(_, b, c)| tcp_clients.contains(c) && *b <= t)
    };
    let all_nicks: Vec<&String> = held.keys().collect();
    for (i, (name, _, end)) in faults.iter().enumerate() {
        let window_end = faults.get(i + 1).map_or(run_end, |next| next.1);
        // 6: presence, replica by replica.
        let mut slowest: Option<u64> = Some(0);
        for replica in 0..replicas {
            let converged = records.iter().find(|r| {
                let Event::Presence {
                    replica: at,
                    online,
                } = &r.event
                else {
                    return false;
                };
                if *at != replica || r.at < *end {
                    return false;
                }
                let shown: HashSet<String> = online.iter().map(|n| n.to_lowercase()).collect();
                let missing = all_nicks.iter().any(|n| {
                    present(n, r.at.saturating_sub(2_000_000), r.at) && !shown.contains(*n)
                });
                let stale = shown
                    .iter()
                    .any(|n| absent_since(n, r.at.saturating_sub(ttl_us + 2_000_000)));
                !missing && !stale
            });
            slowest = match (slowest, converged) {
                (Some(s), Some(r)) => Some(s.max(r.at - end)),
                _ => None,
            };
        }
        let limit = ttl_us + 5_000_000;
        stats.presence_secs.push((name.clone(), slowest.map(secs)));
        if window_end.saturating_sub(*end) > limit && slowest.is_none_or(|s| s > limit) {
            anomalies.push(Anomaly {
                invariant: 6,
                what: format!("after \"{name}\" (ended {:.1}s) presence did not converge on every replica within PRESENCE_TTL + 5 s", secs(*end)),
                events: Vec::new(),
            });
        }
        // 7: the first acknowledged send through each replica after the fault ended.
        let mut worst: Option<u64> = Some(0);
        for replica in 0..replicas {
            let first = records.iter().filter(|r| r.at >= *end).find_map(|r| match &r.event {
                Event::Ack { op, .. } => records.iter().rev().find(|s| matches!(&s.event, Event::Send { op: o, replica: at, .. } if o == op && *at == replica) && s.at >= *end && s.at <= r.at).map(|_| r.at - end),
                _ => None,
            });
            worst = match (worst, first) {
                (Some(w), Some(f)) => Some(w.max(f)),
                _ => None,
            };
        }
        stats.recovery_secs.push((name.clone(), worst.map(secs)));
        let limit = AVAILABILITY_LIMIT.as_micros() as u64;
        if window_end.saturating_sub(*end) > limit && worst.is_none_or(|w| w > limit) {
            anomalies.push(Anomaly {
                invariant: 7,
                what: format!(
                    "after \"{name}\" (ended {:.1}s) some replica acknowledged no send for {}s",
                    secs(*end),
                    AVAILABILITY_LIMIT.as_secs()
                ),
                events: Vec::new(),
            });
        }
    }
}

fn check_dms(
    records: &[Record],
    ops: &BTreeMap<Op, OpInfo>,
    anomalies: &mut Vec<Anomaly>,
    stats: &mut Stats,
) {
    let held = holdings(records);
    let faults = faults(records);
    let mut shown: HashMap<&str, Vec<&Record>> = HashMap::new();
    for record in records {
        if let Event::DmShown { content, .. } = &record.event {
            shown.entry(content).or_default().push(record);
        }
    }
    for info in ops.values() {
        let Some(dm) = info.dm else { continue };
        let Event::Dm { to, content, .. } = &dm.event else {
            continue;
        };
        stats.dms += 1;
        let times = shown.get(content.as_str()).map_or(0, Vec::len);
        let mut events = vec![ev(dm)];
        events.extend(info.acks.iter().chain(&info.fails).map(|r| ev(r)));
        if times > 1 {
            anomalies.push(Anomaly {
                invariant: 8,
                what: format!("DM {content} to {to} was shown {times} times"),
                events,
            });
            continue;
        }
        if !info.fails.is_empty() && times > 0 {
            anomalies.push(Anomaly {
                invariant: 8,
                what: format!("DM {content} to {to} failed, yet was shown"),
                events,
            });
            continue;
        }
        let Some(ack) = info.acks.first() else {
            continue;
        };
        // The recipient held its nickname from before the send until two seconds after the ack
        // — or after the end of a fault under way then: a replica cut off from the bus gets the
        // DM once it is back.
        let settled = faults
            .iter()
            .filter(|(_, start, end)| *start <= ack.at && dm.at <= *end)
            .map(|(_, _, end)| *end)
            .fold(ack.at, u64::max);
        let ack_at = settled;
        let connected = held
            .get(&to.to_lowercase())
            .into_iter()
            .flatten()
            .any(|(a, b, _)| *a <= dm.at && ack_at + 2_000_000 <= *b);
        if connected && times == 0 {
            anomalies.push(Anomaly {
                invariant: 8,
                what: format!(
                    "DM {content} to {to}, acknowledged, never reached the connected recipient"
                ),
                events,
            });
        }
    }
}
