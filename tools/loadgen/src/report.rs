//! What each receiver saw, and the merged report.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ChatArgs;
use crate::chat::unix_nanos;

/// Microseconds, 1 µs to 10 min, to 2 significant digits (1 %). Every receiver keeps one, so it is
/// kept small: at 3 digits each took about 170 KB (170 MB for 1,000 members), at 2 about 25 KB.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds")
}

/// One member's view: which messages of which sender arrived, how late, in what order.
pub struct Receiver {
    run_tag: String,
    latency_us: Histogram<u64>,
    /// The senders whose messages it should get (indices into the senders' counts).
    expect_from: Vec<usize>,
    /// How many messages it should have got, once the senders are done.
    expected: u64,
    /// Per sender heard from: a bit per seq seen, and the highest seq seen (for order checks).
    seen: HashMap<usize, (Vec<u64>, Option<u64>)>,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    errors: u64,
    /// The server closed this member's connection before it had everything.
    cut_off: bool,
}

impl Receiver {
    pub fn new(expect_from: Vec<usize>, run_id: u32) -> Self {
        Receiver {
            run_tag: format!("lg{run_id:08x}_"),
            latency_us: latency_histogram(),
            expect_from,
            expected: 0,
            seen: HashMap::new(),
            unique: 0,
            duplicates: 0,
            out_of_order: 0,
            errors: 0,
            cut_off: false,
        }
    }

    /// Reads until it has every message its senders sent, or until `give_up`.
    pub async fn run(
        mut self,
        mut lines: std::pin::Pin<Box<dyn Stream<Item = String> + Send>>,
        mut sent: watch::Receiver<Option<Arc<Vec<u64>>>>,
        give_up: CancellationToken,
    ) -> Receiver {
        let mut expected: Option<u64> = None;
        let total = |counts: &Option<Arc<Vec<u64>>>, from: &[usize]| {
            counts
                .as_ref()
                .map(|counts| from.iter().map(|&s| counts[s]).sum::<u64>())
        };
        loop {
            if let Some(total) = expected
                && self.unique >= total
            {
                break;
            }
            tokio::select! {
                // Lines first: the other two are polled only when no line is waiting, instead of
                // registering (and dropping) two wakers for most lines.
                biased;
                line = lines.next() => match line {
                    None => {
                        self.cut_off = true;
                        break;
                    }
                    Some(line) => self.observe(line.trim_end()),
                },
                _ = sent.changed(), if expected.is_none() => {
                    expected = total(&sent.borrow(), &self.expect_from);
                }
                _ = give_up.cancelled() => break,
            }
        }
        self.expected = total(&sent.borrow(), &self.expect_from).unwrap_or(0);
        self
    }

    fn observe(&mut self, line: &str) {
        if line.starts_with("Error: ") {
            self.errors += 1;
            return;
        }
        // "[room] lgXXXXXXXX_N: <sender> <seq> <due-unix-nanos> <padding>"
        let Some((who, content)) = line.split_once(": ") else {
            return;
        };
        if !who.contains(&self.run_tag) {
            return;
        }
        let mut fields = content.split(' ');
        let (Some(sender), Some(seq), Some(due)) = (fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        let (Ok(sender), Ok(seq), Ok(due)) = (
            sender.parse::<usize>(),
            seq.parse::<u64>(),
            due.parse::<u64>(),
        ) else {
            return;
        };
        let (bits, highest) = self.seen.entry(sender).or_default();
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        bits[word] |= 1 << bit;
        self.unique += 1;
        if highest.is_some_and(|h| seq < h) {
            self.out_of_order += 1;
        }
        *highest = (*highest).max(Some(seq));
        let latency_us = unix_nanos().saturating_sub(due) / 1_000;
        self.latency_us.saturating_record(latency_us.max(1));
    }
}

#[derive(Serialize)]
pub struct Report {
    endpoints: usize,
    rooms: usize,
    members: usize,
    sse_members: usize,
    senders: usize,
    http_senders: usize,
    target_rate: u64,
    sent: u64,
    send_rate: f64,
    deliveries: u64,
    expected_deliveries: u64,
    deliveries_per_sec: f64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    errors: u64,
    cut_off: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Report {
    pub fn new(
        args: &ChatArgs,
        sent: &[u64],
        send_window: Duration,
        total: Duration,
        receivers: Vec<Receiver>,
    ) -> Report {
        let sent: u64 = sent.iter().sum();
        let mut latency = latency_histogram();
        let (mut deliveries, mut duplicates, mut out_of_order, mut errors, mut cut_off) =
            (0, 0, 0, 0, 0);
        let mut expected = 0;
        for r in &receivers {
            latency.add(&r.latency_us).expect("same bounds");
            expected += r.expected;
            deliveries += r.unique;
            duplicates += r.duplicates;
            out_of_order += r.out_of_order;
            errors += r.errors;
            cut_off += u64::from(r.cut_off);
        }
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        Report {
            endpoints: args.endpoints.len(),
            rooms: args.rooms,
            members: args.members,
            sse_members: args.sse_members,
            senders: args.senders,
            http_senders: args.http_senders,
            target_rate: args.rate,
            sent,
            send_rate: sent as f64 / send_window.as_secs_f64(),
            deliveries,
            expected_deliveries: expected,
            deliveries_per_sec: deliveries as f64
                / total.as_secs_f64().max(send_window.as_secs_f64()),
            lost: expected.saturating_sub(deliveries),
            duplicates,
            out_of_order,
            errors,
            cut_off,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: latency.max() as f64 / 1000.0,
        }
    }

    #[rustfmt::skip] // one line of arguments per line of output
    pub fn text(&self) -> String {
        let r = self;
        format!(
            "members {} TCP + {} SSE in {} room(s), senders {} TCP + {} HTTP, over {} TCP endpoint(s), target {} msg/s\n\
             sent {} ({:.0} msg/s), delivered {}/{} ({:.0} deliveries/s)\n\
             lost {}, duplicates {}, out of order {}, errors {}, members cut off {}\n\
             latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            r.members, r.sse_members, r.rooms, r.senders, r.http_senders, r.endpoints, r.target_rate,
            r.sent, r.send_rate, r.deliveries, r.expected_deliveries, r.deliveries_per_sec,
            r.lost, r.duplicates, r.out_of_order, r.errors, r.cut_off,
            r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms,
        )
    }
}
