//! AMQP 0-9-1 by hand: the few methods a consumer sends and receives, encoded and decoded
//! from byte buffers with no I/O (so the ingest floor, `bare.rs`, owns its socket and these
//! are tested alone), and `amqp://` URLs taken apart.
//!
//! A frame is `type u8, channel u16, size u32, payload[size], 0xCE`. Method payloads start
//! with `class u16, method u16`; a content header with `class u16, weight u16, body size
//! u64` (the properties after it are not read); body frames are raw bytes.

use std::fmt;

/// The protocol header a client sends first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Every frame ends with this octet.
const FRAME_END: u8 = 0xCE;
/// Type, channel and size.
const FRAME_HEAD: usize = 7;
/// Head and end octet: what a frame adds to its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEAD + 1;

const TYPE_METHOD: u8 = 1;
const TYPE_HEADER: u8 = 2;
const TYPE_BODY: u8 = 3;
const TYPE_HEARTBEAT: u8 = 8;

/// (class, method) ids of the methods the ingest floor speaks.
pub mod id {
    pub type Method = (u16, u16);
    pub const CONNECTION_START: Method = (10, 10);
    pub const CONNECTION_START_OK: Method = (10, 11);
    pub const CONNECTION_TUNE: Method = (10, 30);
    pub const CONNECTION_TUNE_OK: Method = (10, 31);
    pub const CONNECTION_OPEN: Method = (10, 40);
    pub const CONNECTION_OPEN_OK: Method = (10, 41);
    pub const CONNECTION_CLOSE: Method = (10, 50);
    pub const CONNECTION_CLOSE_OK: Method = (10, 51);
    pub const CONNECTION_BLOCKED: Method = (10, 60);
    pub const CONNECTION_UNBLOCKED: Method = (10, 61);
    pub const CHANNEL_OPEN: Method = (20, 10);
    pub const CHANNEL_OPEN_OK: Method = (20, 11);
    pub const CHANNEL_CLOSE: Method = (20, 40);
    pub const CHANNEL_CLOSE_OK: Method = (20, 41);
    pub const BASIC_QOS: Method = (60, 10);
    pub const BASIC_QOS_OK: Method = (60, 11);
    pub const BASIC_CONSUME: Method = (60, 20);
    pub const BASIC_CONSUME_OK: Method = (60, 21);
    pub const BASIC_CANCEL: Method = (60, 30);
    pub const BASIC_DELIVER: Method = (60, 60);
    pub const BASIC_ACK: Method = (60, 80);
}

/// A frame that cannot be read: the connection cannot go on after any of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The octet after the payload is not 0xCE: the stream is out of step.
    BadEnd(u8),
    /// A payload larger than the negotiated frame size.
    TooLarge {
        size: usize,
        max: usize,
    },
    UnknownType(u8),
    /// A method or header payload shorter than its fields.
    Truncated(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadEnd(b) => write!(f, "frame end octet is {b:#04x}, not 0xce"),
            FrameError::TooLarge { size, max } => {
                write!(f, "frame of {size} bytes, above the frame max {max}")
            }
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t}"),
            FrameError::Truncated(what) => write!(f, "truncated {what}"),
        }
    }
}

/// One frame, borrowing its payload from the read buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Method {
        channel: u16,
        method: id::Method,
        args: &'a [u8],
    },
    Header {
        channel: u16,
        body_size: u64,
    },
    Body {
        channel: u16,
        data: &'a [u8],
    },
    Heartbeat,
}

/// The first frame of `buf` and the bytes it took; `None` until the whole frame is there
/// (a partial read).
pub fn decode(buf: &[u8], frame_max: usize) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    if buf.len() < FRAME_HEAD {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size + FRAME_OVERHEAD > frame_max {
        return Err(FrameError::TooLarge {
            size: size + FRAME_OVERHEAD,
            max: frame_max,
        });
    }
    let len = FRAME_HEAD + size + 1;
    if buf.len() < len {
        return Ok(None);
    }
    if buf[len - 1] != FRAME_END {
        return Err(FrameError::BadEnd(buf[len - 1]));
    }
    let payload = &buf[FRAME_HEAD..len - 1];
    let frame = match kind {
        TYPE_METHOD => {
            let mut r = Reader::new(payload, "method frame");
            let method = (r.u16()?, r.u16()?);
            Frame::Method {
                channel,
                method,
                args: r.rest(),
            }
        }
        TYPE_HEADER => {
            let mut r = Reader::new(payload, "content header");
            let (_class, _weight) = (r.u16()?, r.u16()?);
            Frame::Header {
                channel,
                body_size: r.u64()?,
            }
        }
        TYPE_BODY => Frame::Body {
            channel,
            data: payload,
        },
        TYPE_HEARTBEAT => Frame::Heartbeat,
        other => return Err(FrameError::UnknownType(other)),
    };
    Ok(Some((frame, len)))
}

/// A field-table value, as far as a client's tables need.
#[derive(Clone, Copy, Debug)]
pub enum Field<'a> {
    Bool(bool),
    LongStr(&'a str),
    Table(&'a [(&'a str, Field<'a>)]),
}

/// Appends one method frame to `out`; `args` writes its arguments.
pub fn method(out: &mut Vec<u8>, channel: u16, m: id::Method, args: impl FnOnce(&mut Writer<'_>)) {
    let start = out.len();
    out.push(TYPE_METHOD);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    let mut w = Writer(out);
    w.u16(m.0).u16(m.1);
    args(&mut w);
    let size = (out.len() - start - FRAME_HEAD) as u32;
    out[start + 3..start + FRAME_HEAD].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
}

/// Writes method arguments in the protocol's encodings.
pub struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    /// A writer of bare arguments, outside a method frame (a content header, in tests).
    #[cfg(test)]
    pub fn new(out: &mut Vec<u8>) -> Writer<'_> {
        Writer(out)
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// At most 255 bytes: longer is cut (names here are the loadgen's own, and short).
    pub fn short_str(&mut self, s: &str) -> &mut Self {
        let b = &s.as_bytes()[..s.len().min(255)];
        self.0.push(b.len() as u8);
        self.0.extend_from_slice(b);
        self
    }

    pub fn long_str(&mut self, s: &[u8]) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s);
        self
    }

    pub fn table(&mut self, entries: &[(&str, Field<'_>)]) -> &mut Self {
        let at = self.0.len();
        self.u32(0);
        for (key, value) in entries {
            self.short_str(key);
            match value {
                Field::Bool(b) => self.u8(b't').u8(u8::from(*b)),
                Field::LongStr(s) => self.u8(b'S').long_str(s.as_bytes()),
                Field::Table(t) => self.u8(b'F').table(t),
            };
        }
        let size = (self.0.len() - at - 4) as u32;
        self.0[at..at + 4].copy_from_slice(&size.to_be_bytes());
        self
    }
}

/// Reads method arguments; every short read is `FrameError::Truncated(what)`.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, FrameError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    pub fn short_str(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    pub fn long_str(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A field table, skipped: the client reads none of the broker's.
    pub fn skip_table(&mut self) -> Result<(), FrameError> {
        self.long_str().map(|_| ())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// `Connection.Close` or `Channel.Close` from the broker, as a sentence.
pub fn close_reason(args: &[u8]) -> String {
    let mut r = Reader::new(args, "close");
    match (r.u16(), r.short_str(), r.u16(), r.u16()) {
        (Ok(code), Ok(text), Ok(class), Ok(method)) => format!(
            "{code} {} (after method {class}.{method})",
            String::from_utf8_lossy(text)
        ),
        _ => "no reason given".into(),
    }
}

/// A delivery put back together from its method, content header and body frames.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Delivery tag of the message being read, from its `Basic.Deliver`.
    tag: Option<u64>,
    /// Its body size, once the content header came.
    size: Option<u64>,
    /// Reused from one message to the next: no allocation per message once warm.
    body: Vec<u8>,
}

/// What a frame did to the message being read.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More frames to come.
    Partial,
    /// The message is whole: its tag; the body is `Assembler::body`.
    Complete(u64),
}

impl Assembler {
    /// A `Basic.Deliver`'s arguments: a new message starts.
    pub fn deliver(&mut self, args: &[u8]) -> Result<(), String> {
        if self.tag.is_some() {
            return Err("Basic.Deliver before the previous message's body ended".into());
        }
        let mut r = Reader::new(args, "Basic.Deliver");
        r.short_str().map_err(|e| e.to_string())?; // consumer tag
        self.tag = Some(r.u64().map_err(|e| e.to_string())?);
        self.size = None;
        self.body.clear();
        Ok(())
    }

    pub fn header(&mut self, body_size: u64) -> Result<Progress, String> {
        if self.tag.is_none() || self.size.is_some() {
            return Err("a content header out of place".into());
        }
        self.size = Some(body_size);
        Ok(self.progress())
    }

    pub fn body_part(&mut self, data: &[u8]) -> Result<Progress, String> {
        let Some(size) = self.size else {
            return Err("a body frame before its content header".into());
        };
        if (self.body.len() + data.len()) as u64 > size {
            return Err(format!(
                "body frames carry more than the {size} bytes announced"
            ));
        }
        self.body.extend_from_slice(data);
        Ok(self.progress())
    }

    fn progress(&mut self) -> Progress {
        match (self.tag, self.size) {
            (Some(tag), Some(size)) if self.body.len() as u64 == size => {
                self.tag = None;
                self.size = None;
                Progress::Complete(tag)
            }
            _ => Progress::Partial,
        }
    }

    /// The body of the message last completed.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// The parts of an `amqp://user:password@host:port/vhost` URL, percent-decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct AmqpUrl {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub vhost: String,
}

impl AmqpUrl {
    pub fn parse(url: &str) -> Result<AmqpUrl, String> {
        let bad = || format!("`{url}` is not amqp://user:password@host[:port][/vhost]");
        let rest = url.strip_prefix("amqp://").ok_or_else(bad)?;
        let rest = rest.split('?').next().unwrap_or_default();
        let (authority, vhost) = match rest.split_once('/') {
            Some((a, v)) => (a, percent_decode(v).ok_or_else(bad)?),
            None => (rest, "/".to_owned()),
        };
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .unwrap_or(("guest:guest", authority));
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (hostport, 5672),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(AmqpUrl {
            user: percent_decode(user).ok_or_else(bad)?,
            password: percent_decode(password).ok_or_else(bad)?,
            host: host.to_owned(),
            port,
            // An empty path is the default vhost, as in the AMQP URI spec's practice.
            vhost: if vhost.is_empty() {
                "/".to_owned()
            } else {
                vhost
            },
        })
    }
}

impl AmqpUrl {
    /// The broker's address; loopback only, as everywhere in the loadgen.
    pub fn socket_addr(&self) -> Result<std::net::SocketAddr, String> {
        use std::net::ToSocketAddrs;
        let mut addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        addrs
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| format!("{} is not a loopback address", self.host))
    }
}

/// `%2f` → `/`; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 131_072;

    /// A heartbeat frame (the floor negotiates none, but a broker may still send one).
    fn heartbeat(out: &mut Vec<u8>) {
        out.extend_from_slice(&[TYPE_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
    }

    /// A frame of any type, as the broker would send it.
    fn raw(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        f
    }

    fn deliver(tag: u64) -> Vec<u8> {
        let mut out = Vec::new();
        method(&mut out, 1, id::BASIC_DELIVER, |w| {
            w.short_str("ctag")
                .u64(tag)
                .u8(0)
                .short_str("ex")
                .short_str("render.job.x");
        });
        out
    }

    fn header(size: u64) -> Vec<u8> {
        let mut p = Vec::new();
        Writer(&mut p).u16(60).u16(0).u64(size).u16(0);
        raw(TYPE_HEADER, 1, &p)
    }

    #[test]
    fn a_method_frame_round_trips() {
        let mut out = Vec::new();
        method(&mut out, 3, id::BASIC_ACK, |w| {
            w.u64(42).u8(1);
        });
        assert_eq!(out.len(), FRAME_OVERHEAD + 4 + 9);
        assert_eq!(*out.last().unwrap(), FRAME_END);
        let (frame, used) = decode(&out, MAX).unwrap().unwrap();
        assert_eq!(used, out.len());
        let Frame::Method {
            channel,
            method,
            args,
        } = frame
        else {
            panic!("not a method: {frame:?}");
        };
        assert_eq!((channel, method), (3, id::BASIC_ACK));
        let mut r = Reader::new(args, "ack");
        assert_eq!((r.u64(), r.u8()), (Ok(42), Ok(1)));
        assert!(r.rest().is_empty());
    }

    #[test]
    fn tables_and_strings_round_trip() {
        let mut out = Vec::new();
        method(&mut out, 0, id::CONNECTION_START_OK, |w| {
            w.table(&[
                ("product", Field::LongStr("loadgen")),
                (
                    "capabilities",
                    Field::Table(&[("consumer_cancel_notify", Field::Bool(true))]),
                ),
            ])
            .short_str("PLAIN")
            .long_str(b"\0guest\0guest")
            .short_str("en_US");
        });
        let Some((Frame::Method { args, .. }, _)) = decode(&out, MAX).unwrap() else {
            panic!("a method");
        };
        let mut r = Reader::new(args, "start-ok");
        // The table's length covers exactly its entries.
        let table = r.long_str().unwrap();
        assert!(table.starts_with(b"\x07productS\x00\x00\x00\x07loadgen\x0ccapabilitiesF"));
        assert!(table.ends_with(b"\x16consumer_cancel_notifyt\x01"));
        assert_eq!(r.short_str().unwrap(), b"PLAIN");
        assert_eq!(r.long_str().unwrap(), b"\0guest\0guest");
        assert_eq!(r.short_str().unwrap(), b"en_US");
        assert_eq!(r.u8(), Err(FrameError::Truncated("start-ok")));
    }

    #[test]
    fn a_partial_read_waits_for_the_rest() {
        let mut stream = deliver(7);
        stream.extend(header(3));
        let whole = stream.len();
        for cut in [
            0,
            1,
            FRAME_HEAD - 1,
            FRAME_HEAD,
            whole - header(3).len() - 1,
        ] {
            assert_eq!(decode(&stream[..cut], MAX), Ok(None), "cut at {cut}");
        }
        let (_, used) = decode(&stream, MAX).unwrap().unwrap();
        let (frame, rest) = decode(&stream[used..], MAX).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Header {
                channel: 1,
                body_size: 3
            }
        );
        assert_eq!(used + rest, whole);
    }

    #[test]
    fn a_bad_frame_end_is_an_error() {
        let mut f = raw(TYPE_BODY, 1, b"abc");
        *f.last_mut().unwrap() = 0x00;
        assert_eq!(decode(&f, MAX), Err(FrameError::BadEnd(0)));
        assert_eq!(
            decode(&raw(9, 0, b""), MAX),
            Err(FrameError::UnknownType(9))
        );
        let big = raw(TYPE_BODY, 1, &[0u8; 100]);
        assert_eq!(
            decode(&big[..FRAME_HEAD], 64),
            Err(FrameError::TooLarge { size: 108, max: 64 }),
            "refused from the head alone, before buffering it"
        );
        assert_eq!(
            decode(&raw(TYPE_METHOD, 0, &[0, 10]), MAX),
            Err(FrameError::Truncated("method frame"))
        );
        let mut hb = Vec::new();
        heartbeat(&mut hb);
        assert_eq!(decode(&hb, MAX), Ok(Some((Frame::Heartbeat, 8))));
    }

    /// Feeds every frame of `stream` to an assembler; the completed (tag, body)s.
    fn assemble(stream: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let (mut a, mut at, mut out) = (Assembler::default(), 0, Vec::new());
        while let Some((frame, used)) = decode(&stream[at..], MAX).map_err(|e| e.to_string())? {
            at += used;
            let p = match frame {
                Frame::Method { args, .. } => {
                    a.deliver(args)?;
                    Progress::Partial
                }
                Frame::Header { body_size, .. } => a.header(body_size)?,
                Frame::Body { data, .. } => a.body_part(data)?,
                Frame::Heartbeat => Progress::Partial,
            };
            if let Progress::Complete(tag) = p {
                out.push((tag, a.body().to_vec()));
            }
        }
        Ok(out)
    }

    #[test]
    fn a_body_split_over_frames_is_put_back_together() {
        let mut stream = deliver(1);
        stream.extend(header(11));
        stream.extend(raw(TYPE_BODY, 1, b"hello "));
        let mut hb = Vec::new();
        heartbeat(&mut hb);
        stream.extend(hb);
        stream.extend(raw(TYPE_BODY, 1, b"world"));
        stream.extend(deliver(2));
        stream.extend(header(0));
        stream.extend(deliver(3));
        stream.extend(header(2));
        stream.extend(raw(TYPE_BODY, 1, b"ok"));
        assert_eq!(
            assemble(&stream).unwrap(),
            vec![
                (1, b"hello world".to_vec()),
                (2, Vec::new()),
                (3, b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn frames_out_of_order_are_refused() {
        let body_first = raw(TYPE_BODY, 1, b"x");
        assert!(assemble(&body_first).is_err());
        let mut too_long = deliver(1);
        too_long.extend(header(1));
        too_long.extend(raw(TYPE_BODY, 1, b"xy"));
        assert!(assemble(&too_long).is_err());
        let mut unfinished = deliver(1);
        unfinished.extend(header(5));
        unfinished.extend(deliver(2));
        assert!(assemble(&unfinished).is_err());
    }

    #[test]
    fn close_reasons_read_as_sentences() {
        let mut out = Vec::new();
        method(&mut out, 0, id::CONNECTION_CLOSE, |w| {
            w.u16(320).short_str("CONNECTION_FORCED").u16(0).u16(0);
        });
        let Some((Frame::Method { args, .. }, _)) = decode(&out, MAX).unwrap() else {
            panic!("a method");
        };
        assert_eq!(
            close_reason(args),
            "320 CONNECTION_FORCED (after method 0.0)"
        );
        assert_eq!(close_reason(&[1]), "no reason given");
    }

    #[test]
    fn amqp_urls_are_taken_apart() {
        let u = AmqpUrl::parse("amqp://guest:s%40cret@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            u,
            AmqpUrl {
                user: "guest".into(),
                password: "s@cret".into(),
                host: "127.0.0.1".into(),
                port: 5673,
                vhost: "/".into(),
            }
        );
        let u = AmqpUrl::parse("amqp://localhost").unwrap();
        assert_eq!(
            (u.user.as_str(), u.port, u.vhost.as_str()),
            ("guest", 5672, "/")
        );
        assert_eq!(
            AmqpUrl::parse("amqp://u:p@h/prod?heartbeat=5")
                .unwrap()
                .vhost,
            "prod"
        );
        assert!(AmqpUrl::parse("amqps://h").is_err());
        assert!(AmqpUrl::parse("amqp://u:p@h:x/").is_err());
        assert!(AmqpUrl::parse("amqp://u:p@h/%zz").is_err());
    }
}
