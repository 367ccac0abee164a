//! The listener's framing decision does not depend on how a request's bytes arrived.
//!
//! The listener reads until `next_request` says something other than `Incomplete`, and acts on
//! that. Whatever prefix it had then, the boundary it drew must be the one the whole input has:
//! a request framed from a prefix and framed differently once more bytes are in would be a
//! desynchronised connection. (Handing over to hyper is always safe: hyper reads from the start.)
#![no_main]

use baby_discord::adapters::http::framing::{Next, next_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = next_request(data);
    for end in 0..=data.len() {
        match next_request(&data[..end]) {
            Next::Incomplete => {}
            Next::HandOver => return,
            // A stream is framed only when its head is all there is, so it ends at `end`; with
            // more bytes after it, the same head is one exchange of exactly those bytes.
            Next::Stream(_) => {
                match whole {
                    Next::Stream(_) => assert_eq!(end, data.len()),
                    Next::Exchange(n) => assert_eq!(n, end, "a stream head framed differently"),
                    other => panic!("a prefix of {end} bytes is a stream, the whole {other:?}"),
                }
                return;
            }
            Next::Exchange(n) => {
                assert!(
                    matches!(whole, Next::Exchange(m) if m == n),
                    "a prefix of {end} bytes frames {n}, the whole {whole:?}"
                );
                return;
            }
        }
    }
    // Every prefix, the whole included, was incomplete.
    assert!(matches!(whole, Next::Incomplete));
});
