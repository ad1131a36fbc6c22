//! The CSI socket's front: gives every request an `:authority` that the
//! HTTP/2 server accepts.
//!
//! gRPC clients other than grpc-go (grpc-python, grpc-java, grpcurl, the
//! Swift and Dart ones) derive `:authority` from the unix socket's path:
//! `tmp%2Fcsi.sock`, `/run/csi.sock`. That is no valid authority, and the
//! `h2` crate under tonic resets such a stream (RST_STREAM PROTOCOL_ERROR)
//! before any handler runs, with no setting to relax it (hyperium/h2#487
//! is unmerged). A unix socket has no authority worth checking, so an
//! invalid one is replaced by `localhost`, which grpc-go sends.
//!
//! Written by hand because no crate does this rewriting: the frame layer
//! is only the 9-byte frame header (RFC 9113 §4.1), and header blocks are
//! decoded by the `loona-hpack` crate. They are encoded again as literals
//! without indexing (RFC 7541 §6.2.2), which leaves the server's decoding
//! table as it is. Every other frame passes through unread.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// What the client sends first.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame every HTTP/2 peer must take (SETTINGS_MAX_FRAME_SIZE
/// before any setting): rewritten header blocks are cut to it.
const MAX_FRAME: usize = 16_384;
/// The largest header block taken apart; a larger one ends the
/// connection. gRPC requests carry a few hundred bytes of headers.
const MAX_BLOCK: usize = 1 << 20;
/// What stands in for an authority that is none.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// A client's stream of HTTP/2 bytes, with `:authority` made valid.
pub struct AuthorityFix<S> {
    inner: S,
    /// Read from the client, not yet looked at.
    raw: BytesMut,
    /// Ready for the server.
    ready: BytesMut,
    /// Bytes of the connection preface still to pass on.
    preface_left: usize,
    /// Bytes of the current frame's payload still to pass on unread.
    passing: usize,
    /// A header block waiting for its CONTINUATION frames.
    block: Option<Block>,
    decoder: Decoder<'static>,
    eof: bool,
    /// The connection's place among the door's connections.
    _permit: Option<OwnedSemaphorePermit>,
    /// Until the preface has come: a client that connects and sends
    /// nothing is let go.
    preface_deadline: Option<Pin<Box<Sleep>>>,
}

/// A header block being gathered.
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, passed on unchanged if the block cannot be
    /// decoded (the server then ends the connection itself).
    original: Vec<u8>,
}

impl<S> AuthorityFix<S> {
    /// The front of one connection, which holds `permit` while it lives.
    pub fn new(inner: S, permit: impl Into<Option<OwnedSemaphorePermit>>) -> Self {
        AuthorityFix {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            preface_left: PREFACE_LEN,
            passing: 0,
            block: None,
            decoder: Decoder::new(),
            eof: false,
            _permit: permit.into(),
            preface_deadline: Some(Box::pin(tokio::time::sleep(crate::HEADER_TIMEOUT))),
        }
    }

    /// Moves what can be decided from `raw` to `ready`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.preface_left > 0 || self.passing > 0 {
                let left = self.preface_left.max(self.passing);
                let n = left.min(self.raw.len());
                if n == 0 {
                    return Ok(());
                }
                self.ready.extend_from_slice(&self.raw.split_to(n));
                if self.preface_left > 0 {
                    self.preface_left -= n;
                } else {
                    self.passing -= n;
                }
                continue;
            }
            if self.raw.len() < FRAME_HEADER_LEN {
                return Ok(());
            }
            let h = &self.raw[..FRAME_HEADER_LEN];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let (kind, flags) = (h[3], h[4]);
            let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if kind != HEADERS && kind != CONTINUATION {
                // Not a header block: the server sees it as sent.
                self.ready
                    .extend_from_slice(&self.raw.split_to(FRAME_HEADER_LEN));
                self.passing = len;
                continue;
            }
            let gathered = self.block.as_ref().map_or(0, |b| b.original.len());
            if len + gathered > MAX_BLOCK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "header block too large",
                ));
            }
            if self.raw.len() < FRAME_HEADER_LEN + len {
                return Ok(());
            }
            let frame = self.raw.split_to(FRAME_HEADER_LEN + len);
            self.gather(kind, flags, stream_id, &frame);
        }
    }

    /// Adds one HEADERS or CONTINUATION frame to the block, and passes the
    /// block on once it is whole.
    fn gather(&mut self, kind: u8, flags: u8, stream_id: u32, frame: &[u8]) {
        let payload = &frame[FRAME_HEADER_LEN..];
        let started = match (kind, self.block.take()) {
            (HEADERS, None) => headers_fragment(flags, payload).map(|(priority, fragment)| Block {
                stream_id,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                original: Vec::new(),
            }),
            (CONTINUATION, Some(mut b)) if b.stream_id == stream_id => {
                b.fragment.extend_from_slice(payload);
                Some(b)
            }
            (_, pending) => {
                // Out of order: the server will refuse it as it came.
                if let Some(b) = pending {
                    self.ready.extend_from_slice(&b.original);
                }
                self.ready.extend_from_slice(frame);
                return;
            }
        };
        let Some(mut block) = started else {
            self.ready.extend_from_slice(frame);
            return;
        };
        block.original.extend_from_slice(frame);
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return;
        }
        match self.decoder.decode(&block.fragment) {
            Ok(headers) => self.emit(&block, &headers),
            Err(_) => self.ready.extend_from_slice(&block.original),
        }
    }

    /// Writes the block's headers, authority made valid, as a HEADERS frame
    /// and as many CONTINUATION frames as they need.
    fn emit(&mut self, block: &Block, headers: &[(Vec<u8>, Vec<u8>)]) {
        let mut encoded = Vec::new();
        for (name, value) in headers {
            let value = match name.as_slice() {
                b":authority" if !is_authority(value) => LOCAL_AUTHORITY,
                _ => value.as_slice(),
            };
            // Literal header field without indexing, new name.
            encoded.push(0);
            for s in [name.as_slice(), value] {
                encoded.extend(loona_hpack::encoder::encode_integer(s.len(), 7));
                encoded.extend_from_slice(s);
            }
        }
        let mut flags = 0;
        if block.end_stream {
            flags |= END_STREAM;
        }
        let mut first = Vec::new();
        if let Some(p) = &block.priority {
            flags |= PRIORITY;
            first.extend_from_slice(p);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = encoded.split_at(room.min(encoded.len()));
        first.extend_from_slice(head);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame(HEADERS, flags, block.stream_id, &first);
        while !rest.is_empty() {
            let (chunk, more) = rest.split_at(MAX_FRAME.min(rest.len()));
            let flags = if more.is_empty() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, block.stream_id, chunk);
            rest = more;
        }
    }

    fn frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        let len = (payload.len() as u32).to_be_bytes();
        self.ready.extend_from_slice(&len[1..]);
        self.ready.extend_from_slice(&[kind, flags]);
        self.ready.extend_from_slice(&stream_id.to_be_bytes());
        self.ready.extend_from_slice(payload);
    }
}

/// The priority fields and the header block fragment of a HEADERS frame's
/// payload, padding removed; `None` if the payload is malformed.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    if flags & PADDED != 0 {
        let (&pad, rest) = p.split_first()?;
        p = rest.get(..rest.len().checked_sub(pad as usize)?)?;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(p.get(..5)?.try_into().ok()?);
        p = &p[5..];
    }
    Some((priority, p))
}

/// Whether `value` is an authority the server takes.
fn is_authority(value: &[u8]) -> bool {
    axum::http::uri::Authority::try_from(value).is_ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = buf.remaining().min(this.ready.len());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; MAX_FRAME];
            let mut read = ReadBuf::new(&mut chunk);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            if polled.is_pending() {
                if let Some(deadline) = this.preface_deadline.as_mut() {
                    ready!(deadline.as_mut().poll(cx));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface in time",
                    )));
                }
                return Poll::Pending;
            }
            ready!(polled)?;
            if read.filled().is_empty() {
                // The client is gone: whatever is left goes on as it is.
                this.eof = true;
                let rest = this.raw.split();
                this.ready.extend_from_slice(&rest);
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.process()?;
            if this.preface_left == 0 {
                this.preface_deadline = None;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Frames of `bytes` (after the preface): (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let sid = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], sid, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    /// What the server reads when the client sends `sent`, in pieces of
    /// `piece` bytes.
    async fn through(sent: Vec<u8>, piece: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(piece) {
                client.write_all(chunk).await.unwrap();
            }
        });
        let mut fixed = AuthorityFix::new(server, None);
        let mut out = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            let n = fixed.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn an_invalid_authority_becomes_localhost_and_the_rest_is_untouched() {
        let mut client = loona_hpack::Encoder::new();
        let request = |authority: &[u8]| {
            vec![
                (b":method".to_vec(), b"POST".to_vec()),
                (b":path".to_vec(), b"/csi.v1.Identity/Probe".to_vec()),
                (b":authority".to_vec(), authority.to_vec()),
                (b"x-long".to_vec(), vec![b'a'; 40_000]),
            ]
        };
        let first = request(b"tmp%2Fcsi.sock");
        let block = client.encode(first.iter().map(|(n, v)| (&n[..], &v[..])));
        let second = request(b"localhost:50051");
        let block2 = client.encode(second.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut sent = PREFACE.to_vec();
        // A padded HEADERS with priority, then two CONTINUATIONs.
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(&block[..10]);
        payload.extend_from_slice(&[0, 0, 0]);
        sent.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        sent.extend(frame(CONTINUATION, 0, 1, &block[10..20_000]));
        sent.extend(frame(CONTINUATION, END_HEADERS, 1, &block[20_000..]));
        sent.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        sent.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block2));
        for piece in [1, 7, 4096, sent.len()] {
            let out = through(sent.clone(), piece).await;
            assert_eq!(&out[..PREFACE.len()], PREFACE);
            let got = frames(&out[PREFACE.len()..]);
            let mut server = Decoder::new();
            let mut blocks = Vec::new();
            let mut current = Vec::new();
            for (kind, flags, sid, payload) in &got {
                assert!(payload.len() <= MAX_FRAME);
                match *kind {
                    HEADERS | CONTINUATION => {
                        let mut p = payload.as_slice();
                        if *kind == HEADERS && flags & PRIORITY != 0 {
                            assert_eq!(&p[..5], &[0, 0, 0, 0, 15]);
                            p = &p[5..];
                        }
                        current.extend_from_slice(p);
                        if flags & END_HEADERS != 0 {
                            blocks.push((*sid, server.decode(&current).unwrap()));
                            current.clear();
                        }
                    }
                    _ => assert_eq!(
                        (*kind, *sid, payload.as_slice()),
                        (0, 1, &b"\0\0\0\0\0"[..])
                    ),
                }
            }
            let mut want_first = first.clone();
            want_first[2].1 = b"localhost".to_vec();
            assert_eq!(
                blocks,
                vec![(1, want_first), (3, second.clone())],
                "piece {piece}"
            );
            let headers_of =
                |sid: u32| got.iter().find(|f| f.0 == HEADERS && f.2 == sid).unwrap().1;
            assert_eq!(headers_of(1) & END_STREAM, 0);
            assert_eq!(headers_of(3) & END_STREAM, END_STREAM);
        }
    }

    #[tokio::test]
    async fn a_header_block_too_large_ends_the_connection() {
        let mut sent = PREFACE.to_vec();
        for _ in 0..(MAX_BLOCK / MAX_FRAME + 1) {
            sent.extend(frame(CONTINUATION, 0, 1, &[0; MAX_FRAME]));
        }
        let (mut client, server) = tokio::io::duplex(1 << 22);
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut fixed = AuthorityFix::new(server, None);
        let mut out = Vec::new();
        // A CONTINUATION with no HEADERS before it passes as it came.
        assert!(fixed.read_to_end(&mut out).await.is_ok());
        let mut sent = PREFACE.to_vec();
        sent.extend(frame(HEADERS, 0, 1, &[0; MAX_FRAME]));
        for _ in 0..(MAX_BLOCK / MAX_FRAME + 1) {
            sent.extend(frame(CONTINUATION, 0, 1, &[0; MAX_FRAME]));
        }
        let (mut client, server) = tokio::io::duplex(1 << 22);
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut fixed = AuthorityFix::new(server, None);
        let err = fixed.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
