//! Reading a Server-Sent Events body as it arrives, in chunks that may split a frame anywhere.

/// One event: its `event:` name (`message` when absent), `id:` and `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub event: String,
    /// `Some("")` for an `id:` line with no value (which resets a client's last event id).
    pub id: Option<String>,
    pub data: String,
}

/// Collects chunks and yields every frame completed so far. Comment-only frames (keepalives) are
/// skipped.
#[derive(Default)]
pub struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.pending.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut start = 0;
        // Frames end with a blank line; the server ends lines with LF.
        while let Some(end) = self.pending[start..].windows(2).position(|w| w == b"\n\n") {
            frames.extend(parse(&self.pending[start..start + end]));
            start += end + 2;
        }
        self.pending.drain(..start);
        frames
    }
}

fn parse(block: &[u8]) -> Option<Frame> {
    let text = String::from_utf8_lossy(block);
    let mut frame = Frame {
        event: "message".into(),
        id: None,
        data: String::new(),
    };
    let mut any = false;
    for line in text.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => frame.event = value.to_owned(),
            "id" => frame.id = Some(value.to_owned()),
            "data" => {
                if !frame.data.is_empty() {
                    frame.data.push('\n');
                }
                frame.data.push_str(value);
            }
            // A comment (": keepalive") or an unknown field.
            _ => continue,
        }
        any = true;
    }
    any.then_some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_are_joined_and_keepalives_skipped() {
        let mut reader = FrameReader::default();
        assert!(reader.push(b"event: message\nid: 7\nda").is_empty());
        let frames =
            reader.push(b"ta: {\"seq\":7}\n\n: keepalive\n\nevent: connected\ndata: {}\n\n");
        assert_eq!(
            frames,
            [
                Frame {
                    event: "message".into(),
                    id: Some("7".into()),
                    data: "{\"seq\":7}".into()
                },
                Frame {
                    event: "connected".into(),
                    id: None,
                    data: "{}".into()
                }
            ]
        );
    }
}
