//! The netcat input path: line framing, sanitising and command parsing.
//!
//! Input: one byte for the line limit, one seeding how the rest is cut into reads, then the bytes
//! a client sends. Checks that the lines read do not depend on how the bytes arrived (they equal
//! a plain split of the whole input), and that what the parser makes of each line keeps the
//! rules: no control characters in anything shown to others, names of `[A-Za-z0-9_-]` within
//! their limits.
#![no_main]

use baby_discord::adapters::tcp::lines::{Line, LineReader, LineTooLong};
use baby_discord::core::command::{self, Command, Input};
use baby_discord::core::names::{Nickname, RoomName, sanitize};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [limit, seed, input @ ..] = data else {
        return;
    };
    let max = 1 + usize::from(*limit % 64);
    let read = read_in_pieces(max, input, *seed);
    assert_eq!(
        read,
        split(max, input),
        "framing depends on how the bytes arrived"
    );
    for line in read.into_iter().flatten() {
        check_parse(&String::from_utf8_lossy(&line));
    }
});

/// What the server reads when `input` arrives in reads of 1 to 16 bytes, sizes drawn from `seed`.
fn read_in_pieces(max: usize, input: &[u8], seed: u8) -> Vec<Line> {
    let mut reader = LineReader::new(max);
    let mut buf = BytesMut::new();
    let mut lines = Vec::new();
    let mut state = u32::from(seed) | 1;
    let mut rest = input;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (state >> 16) as usize % 16).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(line) = reader.next(&mut buf) {
            lines.push(line);
        }
    }
    lines.extend(reader.last(&mut buf));
    lines
}

/// The framing the protocol describes, on the whole input at once.
fn split(max: usize, input: &[u8]) -> Vec<Line> {
    let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    // After the last `\n`: a last line only if something is there.
    if parts.last().is_some_and(|last| last.is_empty()) {
        parts.pop();
    }
    parts
        .into_iter()
        .map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > max {
                Err(LineTooLong)
            } else {
                Ok(Bytes::copy_from_slice(line))
            }
        })
        .collect()
}

fn check_parse(line: &str) {
    let clean = sanitize(line);
    assert!(
        shown_safely(&clean),
        "sanitize left a control character: {clean:?}"
    );
    let Some(Ok(input)) = command::parse(&clean) else {
        return;
    };
    match input {
        Input::Chat(content) => {
            assert!(!content.is_empty() && content.trim() == content && shown_safely(&content));
            assert!(!content.starts_with('/'));
        }
        Input::Command(Command::Nick(nick) | Command::Dm { to: nick, .. }) => {
            valid_name(nick.as_str(), Nickname::MAX_CHARS)
        }
        Input::Command(Command::Join(room) | Command::Create(room)) => {
            valid_name(room.as_str(), RoomName::MAX_CHARS)
        }
        Input::Command(_) => {}
    }
    if let Some(Ok(Input::Command(Command::Dm { content, .. }))) = command::parse(&clean) {
        assert!(shown_safely(&content));
    }
}

fn shown_safely(text: &str) -> bool {
    text.chars().all(|c| c == '\t' || !c.is_control())
}

fn valid_name(name: &str, max: usize) {
    assert!((1..=max).contains(&name.chars().count()), "{name:?}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "{name:?}"
    );
}
