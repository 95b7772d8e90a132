//! `permessage-deflate` (RFC 7692) for `/ws`: the negotiation, and the reading of the
//! client's compressed messages.
//!
//! The design, for a fan-out server: the gateway always answers
//! `server_no_context_takeover`, so an event is compressed once, on its first use
//! ([`crate::envelope::Event::ws_deflated`]), and that one payload is shared by every
//! connection that negotiated the extension, like the plain frame. A connection keeps no
//! compressor of its own. It also answers `client_no_context_takeover`, so each message a
//! client sends stands alone: its inflater lives only while that message is read, and an
//! idle connection holds none.
//!
//! tungstenite (0.29) has no `permessage-deflate`: it fails any frame with RSV1 set. So the
//! gateway sends its compressed frames itself (a text frame with RSV1, see
//! [`compressed_text`]), and [`Inflating`] sits under tungstenite on the read side: it
//! passes every frame through untouched except a compressed message, which it inflates
//! (bounded by `GATEWAY_WS_MAX_MESSAGE_BYTES`) and hands on as the plain, single-frame
//! message tungstenite then validates like any other.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_EXTENSIONS;
use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::envelope::Event;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";
/// The largest LZ77 window, 32 KiB: what the gateway uses unless a client asks for less.
const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window a client may ask for (RFC 7692 7.1.2).
const MIN_WINDOW_BITS: u8 = 8;

/// `permessage-deflate` as negotiated with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deflate {
    /// The window the client allows our compressor (`server_max_window_bits`, 15 when it
    /// sets none). Messages are compressed alone, so a message no longer than the window
    /// can reach back no further than it: longer ones go plain rather than needing a
    /// compressor per window size.
    window_bits: u8,
    /// Whether the client's offer named `server_max_window_bits`: then the answer echoes
    /// it, and only then (RFC 7692 7.1.2.1).
    echo_window_bits: bool,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` answer: the gateway never keeps a compression
    /// context between messages and asks the client to keep none either.
    pub fn response(&self) -> String {
        let mut answer = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if self.echo_window_bits {
            answer.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        answer
    }

    /// The frame for `event`: its shared compressed payload when it fits the window and
    /// compression saves bytes, else its plain frame.
    pub fn event_frame(&self, event: &Event) -> Message {
        let fits = event.json().len() <= 1usize << self.window_bits;
        match event.ws_deflated().filter(|_| fits) {
            Some(payload) => compressed_text(payload),
            None => Message::Text(event.ws_frame()),
        }
    }

    /// A text message for this connection alone (a snapshot), compressed when that fits
    /// the window and saves bytes.
    pub fn text_frame(&self, text: tungstenite::Utf8Bytes) -> Message {
        let fits = text.len() <= 1usize << self.window_bits;
        match crate::envelope::deflate(text.as_bytes()).filter(|_| fits) {
            Some(payload) => compressed_text(payload),
            None => Message::Text(text),
        }
    }
}

/// A final text frame with RSV1 set: `payload` is a compressed message (RFC 7692 6).
pub fn compressed_text(payload: Bytes) -> Message {
    let mut frame = Frame::message(payload, OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    Message::Frame(frame)
}

/// The first `permessage-deflate` offer in the request's `Sec-WebSocket-Extensions` that
/// the gateway can accept, or `None`: then the connection is plain. An offer with a
/// parameter it does not know, a bad value or a repeated parameter is declined (RFC 7692
/// 5), and the next one is looked at. Browsers offer `permessage-deflate` with at most
/// `client_max_window_bits`, which is always accepted.
pub fn negotiate(headers: &HeaderMap) -> Option<Deflate> {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

/// One offer (`name; param; param=value`), accepted or not.
fn accept_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: [bool; 4] = [false; 4];
    let mut deflate = Deflate {
        window_bits: MAX_WINDOW_BITS,
        echo_window_bits: false,
    };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                deflate.window_bits = window_bits(value?)?;
                deflate.echo_window_bits = true;
                2
            }
            // The client's own window: any it may use is one our inflater reads, so the
            // answer does not limit it.
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(deflate)
}

/// A parameter value, without the quotes a quoted-string form puts around it.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// A window size in bits: 8 to 15, digits only, no leading zero (RFC 7692 7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
        .contains(&bits)
        .then_some(bits)
}

/// A compressed message from the client inflated past `GATEWAY_WS_MAX_MESSAGE_BYTES` (or
/// its compressed frames together did): the connection closes with 1009, as for a plain
/// message over the limit.
#[derive(Debug, thiserror::Error)]
#[error("compressed message inflates beyond the message size limit")]
pub struct InflatedTooBig;

/// A compressed message that is not valid: bad deflate data, or a frame out of place.
#[derive(Debug, thiserror::Error)]
#[error("invalid compressed message: {0}")]
pub struct InvalidCompressed(&'static str);

/// The connection's socket as tungstenite reads it: with `permessage-deflate`, compressed
/// messages are inflated on the way in; without, reads and writes pass straight through.
pub struct Inflating<S> {
    /// The upgraded socket.
    io: S,
    /// The reader's state when the extension was negotiated (`None`: pass-through). Boxed:
    /// a plain connection pays one pointer.
    reader: Option<Box<Reader>>,
}

impl<S> Inflating<S> {
    /// `io`, inflating compressed messages of at most `max_message_bytes` when `deflate`.
    pub fn new(io: S, deflate: bool, max_message_bytes: usize) -> Self {
        let reader = deflate.then(|| {
            Box::new(Reader {
                max: max_message_bytes,
                header: [0; MAX_HEADER],
                header_len: 0,
                step: Step::Header,
                message: None,
                out: Vec::new(),
                out_pos: 0,
            })
        });
        Inflating { io, reader }
    }
}

/// A client frame header: 2 bytes, up to 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;
/// Bytes of compressed payload read from the socket at a time.
const READ_CHUNK: usize = 1024;
/// Output room added at a time while inflating.
const INFLATE_CHUNK: usize = 4096;
/// The tail a sender strips from each compressed message and the receiver puts back
/// before inflating (RFC 7692 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the reader does next.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Reading a frame header into `header`.
    Header,
    /// Handing on `remaining` payload bytes of a frame it does not touch.
    Pass(u64),
    /// Inflating `remaining` bytes of a compressed frame; `mask` at `offset`.
    Inflate {
        remaining: u64,
        mask: [u8; 4],
        offset: usize,
        fin: bool,
    },
    /// Handing on `out[out_pos..]` (a header passed on, or an inflated message), then
    /// `Pass(n)`.
    Emit(u64),
    /// A compressed message failed: every read fails.
    Failed(Failure),
}

/// Why the reader failed.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// See [`InflatedTooBig`].
    TooBig,
    /// See [`InvalidCompressed`].
    Invalid(&'static str),
}

impl Failure {
    fn error(self) -> io::Error {
        match self {
            Failure::TooBig => io::Error::new(io::ErrorKind::InvalidData, InflatedTooBig),
            Failure::Invalid(why) => {
                io::Error::new(io::ErrorKind::InvalidData, InvalidCompressed(why))
            }
        }
    }
}

/// A compressed message being read.
struct Compressed {
    /// Text or binary, from its first frame.
    opcode: u8,
    /// Its own inflater: no context is kept between messages.
    inflater: Decompress,
    /// Compressed bytes so far, bounded like the inflated size.
    compressed: usize,
    /// The message inflated so far, at most the limit.
    inflated: Vec<u8>,
}

/// The read side's state.
struct Reader {
    /// `GATEWAY_WS_MAX_MESSAGE_BYTES`, for the inflated size.
    max: usize,
    /// The frame header being read.
    header: [u8; MAX_HEADER],
    /// Bytes of `header` read so far.
    header_len: usize,
    /// What comes next.
    step: Step,
    /// The compressed message being read, between its first and final frames.
    message: Option<Compressed>,
    /// Bytes to hand on (see [`Step::Emit`]): a header passed on, or an inflated message
    /// framed, whose room is given back once handed on.
    out: Vec<u8>,
    /// How much of `out` was handed on.
    out_pos: usize,
}

/// A parsed client frame header.
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    masked: bool,
    len: u64,
    mask: [u8; 4],
}

/// Bytes the header in `h` needs in all, known once its first two bytes are.
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let len = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + len + mask
}

fn parse_header(h: &[u8]) -> Header {
    let masked = h[1] & 0x80 != 0;
    let (len, at) = match h[1] & 0x7f {
        126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
        127 => (
            u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
            10,
        ),
        n => (u64::from(n), 2),
    };
    let mut mask = [0; 4];
    if masked {
        mask.copy_from_slice(&h[at..at + 4]);
    }
    Header {
        fin: h[0] & 0x80 != 0,
        rsv1: h[0] & 0x40 != 0,
        opcode: h[0] & 0x0f,
        masked,
        len,
        mask,
    }
}

const OP_CONTINUE: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;

impl Reader {
    /// Decides what to do with the frame whose header was just read.
    fn on_header(&mut self) -> Result<Step, Failure> {
        let h = parse_header(&self.header[..self.header_len]);
        let data = h.opcode == OP_TEXT || h.opcode == OP_BINARY;
        let fits = h.len <= self.max as u64;
        // Compressed first frame, or a continuation of a compressed message; anything odd
        // (RSV1 on a control frame, an unmasked or oversized frame) goes on untouched for
        // tungstenite to refuse as it does today.
        let inflate = match (&self.message, h.opcode) {
            (None, _) => data && h.rsv1 && h.masked && fits,
            (Some(_), OP_CONTINUE) if !h.rsv1 && h.masked && fits => true,
            (Some(_), OP_CONTINUE) => {
                return Err(Failure::Invalid("bad continuation of a compressed message"));
            }
            (Some(_), op) if op & 0x08 == 0 => {
                return Err(Failure::Invalid("new message inside a compressed message"));
            }
            (Some(_), _) => false,
        };
        if !inflate {
            self.out.clear();
            self.out.extend_from_slice(&self.header[..self.header_len]);
            self.out_pos = 0;
            return Ok(Step::Emit(h.len));
        }
        if self.message.is_none() {
            self.message = Some(Compressed {
                opcode: h.opcode,
                inflater: Decompress::new(false),
                compressed: 0,
                inflated: Vec::new(),
            });
        }
        Ok(Step::Inflate {
            remaining: h.len,
            mask: h.mask,
            offset: 0,
            fin: h.fin,
        })
    }

    /// Inflates `input` (already unmasked) into `out`, bounded by `max`.
    fn inflate(&mut self, input: &[u8], flush: FlushDecompress) -> Result<(), Failure> {
        let max = self.max;
        let message = self.message.as_mut().expect("inflating a message");
        message.compressed += input.len();
        if message.compressed > max {
            return Err(Failure::TooBig);
        }
        let out = &mut message.inflated;
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                // One byte past the limit tells a message over it from one exactly at it.
                let room = INFLATE_CHUNK.min(max + 1 - out.len());
                out.reserve_exact(room);
            }
            let (before_in, before_out) = (message.inflater.total_in(), out.len());
            let status = message
                .inflater
                .decompress_vec(&input[consumed..], out, flush)
                .map_err(|_| Failure::Invalid("bad deflate data"))?;
            let taken = (message.inflater.total_in() - before_in) as usize;
            consumed += taken;
            if out.len() > max {
                return Err(Failure::TooBig);
            }
            let room_left = out.len() < out.capacity();
            let stalled = taken == 0 && out.len() == before_out;
            // With room left the inflater stopped for want of input: this chunk is done.
            if status == Status::StreamEnd || (room_left && (consumed == input.len() || stalled)) {
                return Ok(());
            }
        }
    }

    /// The message is complete: put back its tail, and turn it into one plain, masked
    /// (with a zero key) final frame for tungstenite.
    fn finish_message(&mut self) -> Result<(), Failure> {
        self.inflate(&TAIL, FlushDecompress::Sync)?;
        let message = self.message.take().expect("a message to finish");
        let payload = message.inflated;
        let len = payload.len();
        let mut framed = Vec::with_capacity(len + MAX_HEADER);
        framed.push(0x80 | message.opcode);
        match len {
            0..=125 => framed.push(0x80 | len as u8),
            126..=0xffff => {
                framed.push(0x80 | 126);
                framed.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                framed.push(0x80 | 127);
                framed.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        framed.extend_from_slice(&[0; 4]);
        framed.extend_from_slice(&payload);
        self.out = framed;
        self.out_pos = 0;
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(r) = this.reader.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        loop {
            match r.step {
                Step::Failed(why) => {
                    r.message = None;
                    r.out = Vec::new();
                    return Poll::Ready(Err(why.error()));
                }
                Step::Emit(then) => {
                    let rest = &r.out[r.out_pos..];
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    r.out_pos += n;
                    if r.out_pos == r.out.len() {
                        r.out_pos = 0;
                        // An inflated message's room is given back; a header's is kept.
                        if r.out.capacity() > MAX_HEADER {
                            r.out = Vec::new();
                        } else {
                            r.out.clear();
                        }
                        r.step = if then > 0 {
                            Step::Pass(then)
                        } else {
                            Step::Header
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                Step::Pass(remaining) => {
                    let want = remaining.min(buf.remaining() as u64) as usize;
                    let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    buf.advance(n);
                    r.step = if n == 0 || remaining == n as u64 {
                        Step::Header
                    } else {
                        Step::Pass(remaining - n as u64)
                    };
                    return Poll::Ready(Ok(()));
                }
                Step::Header => {
                    let need = header_len(&r.header[..r.header_len]);
                    if r.header_len < need {
                        let mut part = ReadBuf::new(&mut r.header[r.header_len..need]);
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
                        let n = part.filled().len();
                        if n == 0 {
                            // End of stream: tungstenite sees it as such.
                            return Poll::Ready(Ok(()));
                        }
                        r.header_len += n;
                        continue;
                    }
                    r.step = match r.on_header() {
                        Ok(step) => step,
                        Err(why) => Step::Failed(why),
                    };
                    r.header_len = 0;
                }
                Step::Inflate {
                    remaining,
                    mask,
                    offset,
                    fin,
                } => {
                    if remaining == 0 {
                        r.step = if !fin {
                            Step::Header
                        } else {
                            match r.finish_message() {
                                Ok(()) => Step::Emit(0),
                                Err(why) => Step::Failed(why),
                            }
                        };
                        continue;
                    }
                    let mut chunk = [0u8; READ_CHUNK];
                    let want = remaining.min(READ_CHUNK as u64) as usize;
                    let mut part = ReadBuf::new(&mut chunk[..want]);
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    for (i, b) in chunk[..n].iter_mut().enumerate() {
                        *b ^= mask[(offset + i) % 4];
                    }
                    r.step = match r.inflate(&chunk[..n], FlushDecompress::None) {
                        Ok(()) => Step::Inflate {
                            remaining: remaining - n as u64,
                            mask,
                            offset: (offset + n) % 4,
                            fin,
                        },
                        Err(why) => Step::Failed(why),
                    };
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::envelope::deflate;

    fn offer(values: &[&str]) -> Option<Deflate> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(v).unwrap());
        }
        negotiate(&h)
    }

    const PLAIN_ANSWER: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn what_browsers_offer_is_accepted_and_answered_without_context_takeover() {
        for browser in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "permessage-deflate;client_max_window_bits=15",
        ] {
            let d = offer(&[browser]).unwrap_or_else(|| panic!("{browser}"));
            assert_eq!(d.response(), PLAIN_ANSWER, "{browser}");
        }
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
    }

    #[test]
    fn a_server_window_is_echoed_and_a_bad_offer_yields_to_the_next() {
        let d = offer(&["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!(
            d.response(),
            format!("{PLAIN_ANSWER}; server_max_window_bits=10")
        );
        let quoted = offer(&["permessage-deflate; server_max_window_bits=\"12\""]).unwrap();
        assert!(quoted.response().ends_with("server_max_window_bits=12"));
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
            let next = offer(&[bad, "permessage-deflate"]).expect("the next offer");
            assert_eq!(next.response(), PLAIN_ANSWER, "{bad}");
        }
        let both = offer(&["permessage-deflate; server_max_window_bits=20, permessage-deflate"]);
        assert_eq!(both.map(|d| d.response()).as_deref(), Some(PLAIN_ANSWER));
    }

    /// A masked client frame.
    fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        masked_frame([0x12, 0x34, 0x56, 0x78], fin, rsv1, opcode, payload)
    }

    /// A final frame as the reader hands an inflated message on: masked with a zero key.
    fn inflated_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        masked_frame([0; 4], true, false, opcode, payload)
    }

    fn masked_frame(mask: [u8; 4], fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// What tungstenite would read from `wire`.
    async fn read_through(wire: &[u8], deflate: bool, max: usize) -> io::Result<Vec<u8>> {
        let mut r = Inflating::new(wire, deflate, max);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    const TEXT: &str = r#"{"type":"subscribe","types":["render.job.queued.v1","render.job.started.v1","render.job.progress.v1","render.job.completed.v1"]}"#;

    #[tokio::test]
    async fn a_compressed_message_is_handed_on_plain_and_other_frames_untouched() {
        let compressed = deflate(TEXT.as_bytes()).unwrap();
        let ping = client_frame(true, false, 0x9, b"hi");
        let plain = client_frame(true, false, OP_TEXT, b"{}");
        let mut wire = client_frame(true, true, OP_TEXT, &compressed);
        wire.extend_from_slice(&ping);
        wire.extend_from_slice(&plain);
        let out = read_through(&wire, true, 16384).await.unwrap();
        let mut want = inflated_frame(OP_TEXT, TEXT.as_bytes());
        want.extend_from_slice(&ping);
        want.extend_from_slice(&plain);
        assert_eq!(out, want);
        // Without the extension nothing is looked at.
        assert_eq!(read_through(&wire, false, 16384).await.unwrap(), wire);
    }

    #[tokio::test]
    async fn a_fragmented_compressed_message_becomes_one_frame() {
        let compressed = deflate(TEXT.as_bytes()).unwrap();
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut wire = client_frame(false, true, OP_TEXT, a);
        wire.extend(client_frame(true, false, 0x9, b""));
        wire.extend(client_frame(true, false, OP_CONTINUE, b));
        let out = read_through(&wire, true, 16384).await.unwrap();
        // The ping between the fragments comes first, then the whole message.
        let mut want = client_frame(true, false, 0x9, b"");
        want.extend(inflated_frame(OP_TEXT, TEXT.as_bytes()));
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn a_compression_bomb_is_refused_past_the_limit() {
        let bomb = deflate(&vec![b'a'; 1 << 20]).unwrap();
        assert!(bomb.len() < 16384, "a small frame: {}", bomb.len());
        let wire = client_frame(true, true, OP_TEXT, &bomb);
        let err = read_through(&wire, true, 16384).await.unwrap_err();
        assert!(err.get_ref().unwrap().is::<InflatedTooBig>(), "{err}");
        // Exactly at the limit is fine.
        let at_limit = deflate(&vec![b'a'; 16384]).unwrap();
        let wire = client_frame(true, true, OP_TEXT, &at_limit);
        let out = read_through(&wire, true, 16384).await.unwrap();
        assert_eq!(out.len(), 16384 + 8);
    }

    #[test]
    fn an_idle_negotiated_connection_keeps_no_compressor_or_inflater() {
        // What a connection with the extension holds between messages: the reader's
        // state, no deflate tables (see Performance, bytes on the wire).
        let size = std::mem::size_of::<Reader>();
        assert!(size <= 160, "{size} bytes");
        assert_eq!(std::mem::size_of::<Inflating<()>>(), 8);
    }

    #[tokio::test]
    async fn bad_deflate_data_and_misplaced_frames_fail_the_read() {
        let wire = client_frame(true, true, OP_TEXT, &[0xff; 40]);
        let err = read_through(&wire, true, 16384).await.unwrap_err();
        assert!(err.get_ref().unwrap().is::<InvalidCompressed>(), "{err}");
        let compressed = deflate(TEXT.as_bytes()).unwrap();
        let mut wire = client_frame(false, true, OP_TEXT, &compressed);
        wire.extend(client_frame(true, false, OP_TEXT, b"{}"));
        let err = read_through(&wire, true, 16384).await.unwrap_err();
        assert!(err.get_ref().unwrap().is::<InvalidCompressed>(), "{err}");
    }
}
