//! A request on the local status socket, as the agent reads it: `local_socket::read_request` (one
//! line of at most `MAX_REQUEST_BYTES`, from a client that may send it in any pieces) and
//! `local_socket::parse_request` (exactly `status` or `plan`). The first input byte sets the size
//! of the pieces the reader receives (1 to 8 bytes, or everything at once); the rest is what
//! the client sends before closing.
//!
//! Checked besides "no panic": the line read is the input up to its first LF (or all of it),
//! and `TooLong` exactly when that is more than `MAX_REQUEST_BYTES` with no LF in time; only
//! the lines `status` and `plan` are accepted, and every refusal says what to send.

#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use jex_agent::local_socket::{Line, MAX_REQUEST_BYTES, Query, parse_request, read_request};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out `data` in pieces of at most `piece` bytes, alternating with `Pending`.
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
    pending: bool,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.pending = !self.pending;
        if self.pending {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.data.len().min(self.piece).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, sent)) = data.split_first() else {
        return;
    };
    let piece = match first % 9 {
        0 => usize::MAX,
        n => usize::from(n),
    };
    let mut reader = Pieces {
        data: sent,
        piece,
        pending: false,
    };
    let mut future = std::pin::pin!(read_request(&mut reader));
    let mut cx = Context::from_waker(Waker::noop());
    let line = loop {
        if let Poll::Ready(result) = future.as_mut().poll(&mut cx) {
            break result.expect("reading from memory does not fail");
        }
    };

    let lf = sent.iter().position(|b| *b == b'\n');
    match &line {
        Line::Complete(got) => {
            let want = &sent[..lf.unwrap_or(sent.len())];
            assert_eq!(got.as_slice(), want);
            assert!(got.len() <= MAX_REQUEST_BYTES);
        }
        Line::TooLong => {
            assert!(lf.is_none_or(|lf| lf > MAX_REQUEST_BYTES));
            assert!(sent.len() > MAX_REQUEST_BYTES);
        }
    }

    match parse_request(&line) {
        Ok(Query::Status) => assert_eq!(line, Line::Complete(b"status".to_vec())),
        Ok(Query::Plan) => assert_eq!(line, Line::Complete(b"plan".to_vec())),
        Err(message) => {
            assert!(message.contains("send `status` or `plan`"), "{message}");
            assert!(!matches!(&line, Line::Complete(l) if l == b"status" || l == b"plan"));
        }
    }
    // The same grammar on the bytes as given, without the reader.
    let direct = parse_request(&Line::Complete(sent.to_vec()));
    assert_eq!(
        direct.is_ok(),
        sent == b"status" || sent == b"plan",
        "{direct:?}"
    );
});
