//! The record of a run, Jepsen style: every operation's invocation and completion, everything
//! every client was shown, every fault, every probe — with the time it happened. The checker
//! reads only this record and the store's final contents.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub type ClientId = usize;
/// An operation: one message (or DM) some client sends, retries included.
pub type Op = u64;
/// A segment: one client's uninterrupted view of one room (a connection, a stream, a stay in a
/// room). Order, gaps and duplicates are judged within a segment.
pub type Seg = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Tcp,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegKind {
    /// A netcat member in a room: lines, no seqs (mapped through the store's contents).
    Tcp,
    /// `/api/messages/:room`.
    SseRoom,
    /// `/api/events`, following its session.
    SseEvents,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A fault began or ended.
    Fault {
        name: String,
        phase: String,
    },
    /// Something worth reading beside the faults (a replica that crash-looped, say).
    Note {
        text: String,
    },
    /// A client holds a nickname (TCP: logged in; HTTP: connected), as the server told it.
    Login {
        client: ClientId,
        nick: String,
        http: bool,
        /// An HTTP session with a stream open: the servers bring it back should Valkey lose it.
        /// One without is lost with Valkey's state, until its client next asks.
        #[serde(default)]
        stream: bool,
    },
    /// It no longer does (connection lost, session gone, renamed).
    Logout {
        client: ClientId,
        nick: String,
        why: String,
    },
    /// An attempt to send message `op` (a retry is another Send of the same op).
    Send {
        op: Op,
        client: ClientId,
        via: Via,
        replica: usize,
        room: String,
        content: String,
    },
    /// Acknowledged: the TCP echo, or HTTP 200 with its room and seq.
    Ack {
        op: Op,
        room: String,
        seq: Option<i64>,
    },
    /// Refused with an error: the message must never be stored or shown.
    Fail {
        op: Op,
        error: String,
    },
    /// Outcome unknown (timeout, connection lost): it may or may not exist.
    Unknown {
        op: Op,
        why: String,
    },
    /// A segment began, after a join's history block (TCP) or a stream's first bytes (SSE).
    Segment {
        seg: Seg,
        client: ClientId,
        replica: usize,
        kind: SegKind,
        room: String,
        /// SSE: the Last-Event-ID it resumed from, and the room that id was seen in.
        resume_from: Option<i64>,
        resume_room: Option<String>,
        /// TCP: the history block's contents, oldest first.
        history: Vec<String>,
        /// The history block said "No recent messages".
        empty_history: bool,
    },
    /// A chat message shown in a segment; SSE gives its seq, TCP only its text.
    Shown {
        seg: Seg,
        room: String,
        seq: Option<i64>,
        user: String,
        content: String,
    },
    /// The stream said its position no longer exists (`event: reset`).
    Reset {
        seg: Seg,
    },
    SegmentEnd {
        seg: Seg,
        why: String,
    },
    /// A direct message `op` sent to `to`.
    Dm {
        op: Op,
        client: ClientId,
        to: String,
        content: String,
    },
    DmShown {
        client: ClientId,
        content: String,
    },
    /// Someone tried to take `nick` (a live client's) as a newcomer.
    Probe {
        nick: String,
        replica: usize,
        granted: bool,
    },
    /// What `/list` outside a room said on a replica.
    Presence {
        replica: usize,
        online: Vec<String>,
    },
    /// An HTTP session's `/join` answered "Joined room: …" (what its next message must go to).
    Joined {
        client: ClientId,
        room: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Microseconds since the run began.
    pub at: u64,
    #[serde(flatten)]
    pub event: Event,
}

pub struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
    next: Mutex<(Op, Seg)>,
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
            next: Mutex::new((0, 0)),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn push(&self, event: Event) {
        let at = self.now();
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Record { at, event });
    }

    pub fn next_op(&self) -> Op {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        next.0 += 1;
        next.0
    }

    pub fn next_seg(&self) -> Seg {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        next.1 += 1;
        next.1
    }

    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
