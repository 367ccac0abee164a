//! The listener and hyper agree on where a request ends.
//!
//! For bytes the listener frames itself, hyper is given the same bytes twice: all of them, as on
//! a kept-alive connection, and only the request the listener cut out, as in an exchange. The
//! first request hyper sees in the whole must be the one request it sees in the cut — same
//! method, target, headers and body — or, when hyper refuses the whole, it refuses the cut too.
//! A stream the listener serves itself must be a request hyper reads the same, with no body.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use baby_discord::adapters::http::framing::{Next, next_request};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
}

/// A request as hyper read it; `body` is `None` when it could not be read to its end.
#[derive(Debug, PartialEq)]
struct Seen {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Bytes>,
}

fuzz_target!(|data: &[u8]| {
    match next_request(data) {
        Next::Incomplete | Next::HandOver => {}
        Next::Exchange(n) if n > data.len() => {} // the rest of the body has not arrived
        Next::Exchange(n) => {
            let whole = hyper_reads(data);
            let cut = hyper_reads(&data[..n]);
            match whole.first() {
                None => assert!(
                    cut.is_empty(),
                    "hyper refuses the whole, not the cut: {cut:?}"
                ),
                Some(first) => assert_eq!(
                    cut.as_slice(),
                    std::slice::from_ref(first),
                    "the cut is not hyper's first request"
                ),
            }
        }
        Next::Stream(request) => {
            let whole = hyper_reads(data);
            let [seen] = whole.as_slice() else {
                panic!("a stream hyper reads as {whole:?}");
            };
            assert_eq!(seen.body.as_deref(), Some(&b""[..]));
            assert_eq!(seen.method, request.method().as_str());
            assert_eq!(seen.target, request.uri().to_string());
            assert_eq!(seen.headers, headers(request.headers()));
        }
    }
});

/// Every request hyper reads from `bytes` served as one connection, with the settings of the
/// listener's exchanges.
fn hyper_reads(bytes: &[u8]) -> Vec<Seen> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = {
        let seen = seen.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.ok().map(|b| b.to_bytes());
                seen.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    target: parts.uri.to_string(),
                    version: format!("{:?}", parts.version),
                    headers: headers(&parts.headers),
                    body,
                });
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        })
    };
    let io = TokioIo::new(tokio::io::join(
        std::io::Cursor::new(bytes.to_vec()),
        tokio::io::sink(),
    ));
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(io, service)
                .await;
        })
    });
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

fn headers(map: &axum::http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}
