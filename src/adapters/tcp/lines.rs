//! The line framing of the TCP protocol: bytes in, lines out, each without its line ending.
//!
//! A line ends at `\n`, with an optional `\r` before it. A line longer than the limit is reported
//! once and the rest of it, up to its `\n`, is skipped; the lines after it are read as usual. At
//! the end of input a last line without a `\n` still counts. The result does not depend on how the
//! bytes were split into reads (the fuzz target `tcp_lines` checks exactly that).

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, Decoder};

/// A line as read: its bytes, or the news that it was longer than allowed (and was skipped).
pub type Line = Result<Bytes, LineTooLong>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

pub struct LineReader {
    codec: AnyDelimiterCodec,
    max_line_bytes: usize,
}

impl LineReader {
    pub fn new(max_line_bytes: usize) -> Self {
        LineReader {
            // +1 leaves room for the CR of a CRLF line of exactly max_line_bytes.
            codec: AnyDelimiterCodec::new_with_max_length(
                b"\n".to_vec(),
                Vec::new(),
                max_line_bytes.saturating_add(1),
            ),
            max_line_bytes,
        }
    }

    /// The next complete line in `buf`, taken out of it; `None` until one has arrived.
    pub fn next(&mut self, buf: &mut BytesMut) -> Option<Line> {
        match self.codec.decode(buf) {
            Ok(Some(line)) => Some(self.check(line)),
            Ok(None) => None,
            Err(_too_long) => Some(Err(LineTooLong)),
        }
    }

    /// After the end of input: the last line, if one is left without its `\n`.
    pub fn last(&mut self, buf: &mut BytesMut) -> Option<Line> {
        match self.codec.decode_eof(buf) {
            Ok(Some(line)) if !line.is_empty() => Some(self.check(line)),
            Ok(_) => None,
            Err(_too_long) => Some(Err(LineTooLong)),
        }
    }

    /// Strips the CR; the codec allows one byte more than the limit for it, the line may not.
    fn check(&self, line: Bytes) -> Line {
        let line = match line.last() {
            Some(b'\r') => line.slice(..line.len() - 1),
            _ => line,
        };
        if line.len() > self.max_line_bytes {
            return Err(LineTooLong);
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: usize, input: &[u8]) -> Vec<Line> {
        let mut reader = LineReader::new(max);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(line) = reader.next(&mut buf) {
            out.push(line);
        }
        out.extend(reader.last(&mut buf));
        out
    }

    fn ok(s: &str) -> Line {
        Ok(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn lines_end_at_lf_or_crlf_and_a_last_unterminated_line_counts() {
        assert_eq!(
            lines(10, b"a\r\nb\n\nc"),
            vec![ok("a"), ok("b"), ok(""), ok("c")]
        );
    }

    #[test]
    fn a_long_line_is_reported_once_and_the_next_line_is_read() {
        assert_eq!(lines(3, b"abcd\nok\n"), vec![Err(LineTooLong), ok("ok")]);
        assert_eq!(
            lines(3, b"abcdefgh\nok\n"),
            vec![Err(LineTooLong), ok("ok")]
        );
        // The limit is on the line, not its ending.
        assert_eq!(lines(3, b"abc\r\n"), vec![ok("abc")]);
        assert_eq!(lines(3, b"abc\r\r\n"), vec![Err(LineTooLong)]);
    }
}
