//! The ingest floor's consumer: AMQP 0-9-1 spoken directly on a blocking socket, on the
//! caller's thread. No client library, no runtime, no thread between the socket and the
//! code that counts the events: what it costs per event is the least any consumer with the
//! gateway's settings (prefetch, `multiple` acks batched like src/broker/mod.rs) can pay.
//!
//! Every wait is bounded: the socket's read timeout is armed for the next thing due (an
//! acknowledgement, the caller's deadline, or a short poll), writes time out, and the
//! handshake and the close have deadlines of their own.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::amqp::{self, Assembler, Field, Frame, FrameError, Progress, Reader, id};

/// Most messages acknowledged together (src/broker/mod.rs `ACK_BATCH`).
pub const ACK_BATCH: usize = 64;
/// Longest a processed message waits for its acknowledgement (src/broker/mod.rs
/// `ACK_DELAY`).
pub const ACK_DELAY: Duration = Duration::from_millis(20);

/// The largest frame asked for: RabbitMQ's default, so a 400-byte event is one frame.
const FRAME_MAX: usize = 131_072;
/// The protocol's smallest frame max (frame-min-size).
const FRAME_MIN: usize = 4096;
/// Room kept free for one read: a large read takes whatever the broker has sent.
const READ_MIN: usize = 64 * 1024;
/// The only channel used.
const CHANNEL: u16 = 1;
const CONSUMER_TAG: &str = "ingest-floor";
/// Bounds the handshake, and the close.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest read while nothing else is due, so the caller's deadline is looked at.
const POLL: Duration = Duration::from_millis(100);
/// A read timeout is re-armed (a system call) only when it is this far from what is
/// wanted; within it, a read may wake this much before the next acknowledgement is due.
const REARM_SLACK: Duration = Duration::from_millis(5);

/// Where and as whom to connect.
pub struct Login<'a> {
    pub addr: SocketAddr,
    pub user: &'a str,
    pub password: &'a str,
    pub vhost: &'a str,
}

/// What to consume, and how.
pub struct Subscription<'a> {
    pub queue: &'a str,
    pub prefetch: u16,
    /// As the gateway consumes its live queue; streams take no exclusive consumers.
    pub exclusive: bool,
    /// A stream read live: `x-stream-offset` `next`.
    pub stream_next: bool,
}

/// Received bytes, decoded in place: frames borrow from here until the next read.
struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuf {
    fn new() -> FrameBuf {
        // One frame of the largest size still incomplete, plus one large read.
        FrameBuf {
            buf: vec![0; FRAME_MAX + READ_MIN],
            start: 0,
            end: 0,
        }
    }

    fn next(&mut self, frame_max: usize) -> Result<Option<Frame<'_>>, FrameError> {
        let pending = &self.buf[self.start..self.end];
        match amqp::decode(pending, frame_max)? {
            Some((frame, used)) => {
                self.start += used;
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// One read into the free space; the bytes read (0: the broker closed the socket).
    fn fill(&mut self, socket: &mut TcpStream) -> std::io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < READ_MIN {
            // Only an incomplete frame is left (at most FRAME_MAX): move it to the front.
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let n = socket.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

/// A frame seen while consuming, once its borrow of the read buffer is over.
enum Seen {
    Nothing,
    Delivery(u64),
    ConnectionClose(String),
    ChannelClose(String),
}

/// One consuming connection.
pub struct Consumer {
    socket: TcpStream,
    frames: FrameBuf,
    /// Frames to send, reused.
    out: Vec<u8>,
    frame_max: usize,
    assembler: Assembler,
    /// The read timeout armed on the socket, to re-arm it only when it must change.
    timeout: Option<Duration>,
}

impl Consumer {
    /// Connects, logs in (PLAIN), tunes (the broker's frame max up to 128 KiB, no
    /// heartbeats) and opens the vhost and one channel.
    pub fn connect(login: &Login<'_>) -> Result<Consumer, String> {
        if !login.addr.ip().is_loopback() {
            return Err(format!("{} is not a loopback address", login.addr));
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let socket = TcpStream::connect_timeout(&login.addr, SETUP_TIMEOUT)
            .map_err(|e| format!("cannot connect to {}: {e}", login.addr))?;
        socket
            .set_nodelay(true)
            .and_then(|()| socket.set_write_timeout(Some(WRITE_TIMEOUT)))
            .map_err(|e| format!("socket options: {e}"))?;
        let mut c = Consumer {
            socket,
            frames: FrameBuf::new(),
            out: Vec::with_capacity(1024),
            frame_max: FRAME_MAX,
            assembler: Assembler::default(),
            timeout: None,
        };
        c.out.extend_from_slice(amqp::PROTOCOL_HEADER);
        c.send()?;
        c.handshake(login, deadline)?;
        Ok(c)
    }

    fn handshake(&mut self, login: &Login<'_>, deadline: Instant) -> Result<(), String> {
        let start = self.expect(id::CONNECTION_START, deadline)?;
        let mut r = Reader::new(&start, "Connection.Start");
        let version = (r.u8(), r.u8());
        r.skip_table().map_err(|e| e.to_string())?;
        let mechanisms = r.long_str().map_err(|e| e.to_string())?;
        if version != (Ok(0), Ok(9)) {
            return Err(format!("the broker speaks AMQP {version:?}, not 0-9-1"));
        }
        if !mechanisms.split(|b| *b == b' ').any(|m| m == b"PLAIN") {
            return Err("the broker does not offer PLAIN login".into());
        }
        let response = format!("\0{}\0{}", login.user, login.password);
        amqp::method(&mut self.out, 0, id::CONNECTION_START_OK, |w| {
            w.table(&[
                ("product", Field::LongStr("loadgen ingest floor")),
                (
                    "capabilities",
                    // So a deleted queue ends the consumer with Basic.Cancel, not silence.
                    Field::Table(&[("consumer_cancel_notify", Field::Bool(true))]),
                ),
            ])
            .short_str("PLAIN")
            .long_str(response.as_bytes())
            .short_str("en_US");
        });
        self.send()?;
        let tune = self.expect(id::CONNECTION_TUNE, deadline)?;
        let mut r = Reader::new(&tune, "Connection.Tune");
        let (_channels, frame_max) = (r.u16(), r.u32().map_err(|e| e.to_string())?);
        self.frame_max = match frame_max as usize {
            0 => FRAME_MAX,
            n if n < FRAME_MIN => return Err(format!("the broker's frame max {n} is too small")),
            n => n.min(FRAME_MAX),
        };
        // Heartbeat 0: none either way. A run lasts seconds; the broker's interval is 60 s.
        amqp::method(&mut self.out, 0, id::CONNECTION_TUNE_OK, |w| {
            w.u16(CHANNEL).u32(self.frame_max as u32).u16(0);
        });
        amqp::method(&mut self.out, 0, id::CONNECTION_OPEN, |w| {
            w.short_str(login.vhost).short_str("").u8(0);
        });
        self.send()?;
        self.expect(id::CONNECTION_OPEN_OK, deadline)?;
        amqp::method(&mut self.out, CHANNEL, id::CHANNEL_OPEN, |w| {
            w.short_str("");
        });
        self.send()?;
        self.expect(id::CHANNEL_OPEN_OK, deadline)?;
        Ok(())
    }

    /// `Basic.Qos` with the prefetch, then `Basic.Consume` with acknowledgements.
    pub fn subscribe(&mut self, s: &Subscription<'_>) -> Result<(), String> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        amqp::method(&mut self.out, CHANNEL, id::BASIC_QOS, |w| {
            w.u32(0).u16(s.prefetch).u8(0);
        });
        self.send()?;
        self.expect(id::BASIC_QOS_OK, deadline)?;
        let offset = [("x-stream-offset", Field::LongStr("next"))];
        let args: &[(&str, Field<'_>)] = if s.stream_next { &offset } else { &[] };
        // Bits: no-local, no-ack (off: acknowledged), exclusive, no-wait.
        let bits = if s.exclusive { 0b0100 } else { 0 };
        amqp::method(&mut self.out, CHANNEL, id::BASIC_CONSUME, |w| {
            w.u16(0)
                .short_str(s.queue)
                .short_str(CONSUMER_TAG)
                .u8(bits)
                .table(args);
        });
        self.send()?;
        self.expect(id::BASIC_CONSUME_OK, deadline)
            .map_err(|e| format!("basic.consume {}: {e}", s.queue))?;
        Ok(())
    }

    /// The next delivery's tag (its body is [`Consumer::body`]), or `None` when `until`
    /// came first (or a little before it: look at the clock).
    pub fn next(&mut self, until: Instant) -> Result<Option<u64>, String> {
        loop {
            while let Some(frame) = self
                .frames
                .next(self.frame_max)
                .map_err(|e| e.to_string())?
            {
                match dispatch(frame, &mut self.assembler)? {
                    Seen::Nothing => {}
                    Seen::Delivery(tag) => return Ok(Some(tag)),
                    Seen::ConnectionClose(why) => {
                        amqp::method(&mut self.out, 0, id::CONNECTION_CLOSE_OK, |_| {});
                        let _ = self.send();
                        return Err(format!("the broker closed the connection: {why}"));
                    }
                    Seen::ChannelClose(why) => {
                        amqp::method(&mut self.out, CHANNEL, id::CHANNEL_CLOSE_OK, |_| {});
                        let _ = self.send();
                        return Err(format!("the broker closed the channel: {why}"));
                    }
                }
            }
            if !self.fill(until)? {
                return Ok(None);
            }
        }
    }

    /// The body of the delivery [`Consumer::next`] returned last.
    pub fn body(&self) -> &[u8] {
        self.assembler.body()
    }

    /// Acknowledges every delivery up to `tag` (`multiple`).
    pub fn ack_up_to(&mut self, tag: u64) -> Result<(), String> {
        amqp::method(&mut self.out, CHANNEL, id::BASIC_ACK, |w| {
            w.u64(tag).u8(1);
        });
        self.send().map_err(|e| format!("basic.ack: {e}"))
    }

    /// `Connection.Close`, and its `Close-Ok` awaited for a few seconds. Deliveries still
    /// arriving are not acknowledged: the broker requeues them.
    pub fn close(mut self) -> Result<(), String> {
        amqp::method(&mut self.out, 0, id::CONNECTION_CLOSE, |w| {
            w.u16(200).short_str("ingest floor done").u16(0).u16(0);
        });
        self.send()?;
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            while let Some(frame) = self
                .frames
                .next(self.frame_max)
                .map_err(|e| e.to_string())?
            {
                if let Frame::Method { method, .. } = frame
                    && matches!(method, id::CONNECTION_CLOSE_OK | id::CONNECTION_CLOSE)
                {
                    return Ok(());
                }
            }
            if !self.fill(deadline)? && Instant::now() >= deadline {
                return Err("no Connection.Close-Ok within 3 s".into());
            }
        }
    }

    /// Waits for the method `want` during setup; anything else is an error.
    fn expect(&mut self, want: id::Method, deadline: Instant) -> Result<Vec<u8>, String> {
        loop {
            while let Some(frame) = self
                .frames
                .next(self.frame_max)
                .map_err(|e| e.to_string())?
            {
                let (method, args) = match frame {
                    Frame::Heartbeat => continue,
                    Frame::Method { method, args, .. } => (method, args),
                    other => return Err(format!("unexpected {other:?} during setup")),
                };
                if method == want {
                    return Ok(args.to_vec());
                }
                let why = amqp::close_reason(args);
                return Err(match method {
                    id::CONNECTION_CLOSE => format!("the broker closed the connection: {why}"),
                    id::CHANNEL_CLOSE => format!("the broker closed the channel: {why}"),
                    (c, m) => format!("expected method {}.{}, got {c}.{m}", want.0, want.1),
                });
            }
            if !self.fill(deadline)? && Instant::now() >= deadline {
                return Err(format!(
                    "no method {}.{} from the broker in time",
                    want.0, want.1
                ));
            }
        }
    }

    fn send(&mut self) -> Result<(), String> {
        let r = self.socket.write_all(&self.out);
        self.out.clear();
        r.map_err(|e| format!("write to the broker: {e}"))
    }

    /// One read, waiting until `until` at most; false when nothing came by then.
    fn fill(&mut self, until: Instant) -> Result<bool, String> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.arm(left)?;
        match self.frames.fill(&mut self.socket) {
            Ok(0) => Err("the broker closed the socket".into()),
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(format!("read from the broker: {e}")),
        }
    }

    /// Arms the read timeout to wake no later than `left` from now. Re-arming is a system
    /// call, so a timeout that wakes at most `REARM_SLACK` early is kept.
    fn arm(&mut self, left: Duration) -> Result<(), String> {
        let keep = self
            .timeout
            .is_some_and(|t| t <= left && left <= t + REARM_SLACK);
        if keep {
            return Ok(());
        }
        let t = left
            .saturating_sub(REARM_SLACK)
            .max(left.min(Duration::from_millis(1)));
        self.socket
            .set_read_timeout(Some(t))
            .map_err(|e| format!("read timeout: {e}"))?;
        self.timeout = Some(t);
        Ok(())
    }
}

/// What one frame means to a consumer.
fn dispatch(frame: Frame<'_>, assembler: &mut Assembler) -> Result<Seen, String> {
    let progress = match frame {
        Frame::Heartbeat => return Ok(Seen::Nothing),
        Frame::Header { channel, .. } | Frame::Body { channel, .. } if channel != CHANNEL => {
            return Err(format!("content on channel {channel}, not {CHANNEL}"));
        }
        Frame::Header { body_size, .. } => assembler.header(body_size)?,
        Frame::Body { data, .. } => assembler.body_part(data)?,
        Frame::Method { method, args, .. } => {
            return match method {
                id::BASIC_DELIVER => assembler.deliver(args).map(|()| Seen::Nothing),
                id::CONNECTION_CLOSE => Ok(Seen::ConnectionClose(amqp::close_reason(args))),
                id::CHANNEL_CLOSE => Ok(Seen::ChannelClose(amqp::close_reason(args))),
                id::BASIC_CANCEL => {
                    Err("the broker cancelled the consumer (queue deleted?)".into())
                }
                id::CONNECTION_BLOCKED | id::CONNECTION_UNBLOCKED => Ok(Seen::Nothing),
                (c, m) => Err(format!("unexpected method {c}.{m} while consuming")),
            };
        }
    };
    Ok(match progress {
        Progress::Complete(tag) => Seen::Delivery(tag),
        Progress::Partial => Seen::Nothing,
    })
}

/// Acknowledgements batched as the gateway does: `multiple`, when half the prefetch (at
/// most `ACK_BATCH`) is pending or `ACK_DELAY` after the first pending one.
pub struct Acks {
    batch: usize,
    /// Tag of the newest processed, unacknowledged message.
    due: Option<u64>,
    unacked: usize,
    /// When the pending batch must go, whatever its size.
    at: Option<Instant>,
}

impl Acks {
    pub fn new(prefetch: u16) -> Acks {
        Acks {
            batch: (usize::from(prefetch) / 2).clamp(1, ACK_BATCH),
            due: None,
            unacked: 0,
            at: None,
        }
    }

    /// Records a processed message; true when the batch is full.
    pub fn processed(&mut self, tag: u64, now: Instant) -> bool {
        self.at.get_or_insert(now + ACK_DELAY);
        self.due = Some(tag);
        self.unacked += 1;
        self.unacked >= self.batch
    }

    pub fn due_at(&self) -> Option<Instant> {
        self.at
    }

    /// The tag to acknowledge up to, if any; the batch starts over.
    pub fn take(&mut self) -> Option<u64> {
        (self.unacked, self.at) = (0, None);
        self.due.take()
    }
}

/// Consumes until `done` says so (it sees each body) or the deadline `end` gives passes,
/// acknowledging as the gateway does; what was seen is acknowledged before returning.
pub fn consume(
    c: &mut Consumer,
    prefetch: u16,
    mut done: impl FnMut(&[u8]) -> bool,
    mut end: impl FnMut() -> Option<Instant>,
) -> Result<(), String> {
    let mut acks = Acks::new(prefetch);
    let result = loop {
        let now = Instant::now();
        let end_at = end();
        if end_at.is_some_and(|e| now >= e) {
            break Ok(());
        }
        if acks.due_at().is_some_and(|at| now >= at)
            && let Some(tag) = acks.take()
            && let Err(e) = c.ack_up_to(tag)
        {
            break Err(e);
        }
        let wake = [acks.due_at(), end_at, Some(now + POLL)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + POLL);
        match c.next(wake) {
            Ok(Some(tag)) => {
                let finished = done(c.body());
                if acks.processed(tag, Instant::now())
                    && let Some(tag) = acks.take()
                    && let Err(e) = c.ack_up_to(tag)
                {
                    break Err(e);
                }
                if finished {
                    break Ok(());
                }
            }
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    match (acks.take(), result) {
        (Some(tag), Ok(())) => c.ack_up_to(tag),
        (_, r) => r,
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use lapin::options::{
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;
    use crate::amqp::{AmqpUrl, Writer};

    const WITHIN: Duration = Duration::from_secs(10);

    /// The next whole frame from a blocking socket: (method or None, args or body).
    fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Option<id::Method>, Vec<u8>)> {
        loop {
            if let Some((frame, used)) = amqp::decode(buf, FRAME_MAX).expect("a good frame") {
                let out = match frame {
                    Frame::Method { method, args, .. } => (Some(method), args.to_vec()),
                    Frame::Body { data, .. } => (None, data.to_vec()),
                    _ => (None, Vec::new()),
                };
                buf.drain(..used);
                return Some(out);
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    fn content(out: &mut Vec<u8>, tag: u64, parts: &[&[u8]]) {
        amqp::method(out, CHANNEL, id::BASIC_DELIVER, |w| {
            w.short_str(CONSUMER_TAG)
                .u64(tag)
                .u8(0)
                .short_str("x")
                .short_str("render.job.x");
        });
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let mut header = vec![2, 0, 1];
        let mut p = Vec::new();
        Writer::new(&mut p).u16(60).u16(0).u64(size as u64).u16(0);
        header.extend_from_slice(&(p.len() as u32).to_be_bytes());
        header.extend(p);
        header.push(0xCE);
        out.extend(header);
        for part in parts {
            out.extend_from_slice(&[3, 0, 1]);
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
            out.push(0xCE);
        }
    }

    /// A broker that answers the handshake, delivers three messages (the second over two
    /// body frames, and cut in two writes), then closes the connection; it returns the
    /// acknowledgements it got: (tag, multiple).
    fn fake_broker(l: TcpListener) -> Vec<(u64, u8)> {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(WITHIN)).expect("timeout");
        let mut header = [0u8; 8];
        s.read_exact(&mut header).expect("protocol header");
        assert_eq!(&header, amqp::PROTOCOL_HEADER);
        let mut out = Vec::new();
        amqp::method(&mut out, 0, id::CONNECTION_START, |w| {
            w.u8(0)
                .u8(9)
                .table(&[])
                .long_str(b"AMQPLAIN PLAIN")
                .long_str(b"en_US");
        });
        s.write_all(&out).expect("start");
        let (mut buf, mut acks) = (Vec::new(), Vec::new());
        while let Some((method, args)) = read_frame(&mut s, &mut buf) {
            out.clear();
            match method {
                Some(id::CONNECTION_START_OK) => {
                    let mut r = Reader::new(&args, "start-ok");
                    r.skip_table().expect("client properties");
                    assert_eq!(r.short_str(), Ok(&b"PLAIN"[..]));
                    assert_eq!(r.long_str(), Ok(&b"\0guest\0guest"[..]));
                    amqp::method(&mut out, 0, id::CONNECTION_TUNE, |w| {
                        w.u16(2047).u32(131_072).u16(60);
                    });
                }
                Some(id::CONNECTION_OPEN) => {
                    amqp::method(&mut out, 0, id::CONNECTION_OPEN_OK, |w| {
                        w.short_str("");
                    })
                }
                Some(id::CHANNEL_OPEN) => {
                    amqp::method(&mut out, CHANNEL, id::CHANNEL_OPEN_OK, |w| {
                        w.long_str(b"");
                    })
                }
                Some(id::BASIC_QOS) => amqp::method(&mut out, CHANNEL, id::BASIC_QOS_OK, |_| {}),
                Some(id::BASIC_CONSUME) => {
                    amqp::method(&mut out, CHANNEL, id::BASIC_CONSUME_OK, |w| {
                        w.short_str(CONSUMER_TAG);
                    });
                    content(&mut out, 1, &[b"a"]);
                    // Cut inside the second message's method frame.
                    let cut = out.len() + 10;
                    content(&mut out, 2, &[b"hello ", b"world"]);
                    content(&mut out, 3, &[b"c"]);
                    amqp::method(&mut out, 0, id::CONNECTION_CLOSE, |w| {
                        w.u16(320).short_str("CONNECTION_FORCED").u16(0).u16(0);
                    });
                    // Two writes: the consumer sees a partial frame first, and the rest
                    // only once it has acknowledged the first message on its own timer
                    // (however long the machine takes to run it).
                    s.write_all(&out[..cut]).expect("first part");
                    while let Some((method, args)) = read_frame(&mut s, &mut buf) {
                        if method == Some(id::BASIC_ACK) {
                            let mut r = Reader::new(&args, "ack");
                            acks.push((r.u64().expect("tag"), r.u8().expect("multiple")));
                            break;
                        }
                    }
                    s.write_all(&out[cut..]).expect("the rest");
                    out.clear();
                }
                Some(id::BASIC_ACK) => {
                    let mut r = Reader::new(&args, "ack");
                    acks.push((r.u64().expect("tag"), r.u8().expect("multiple")));
                }
                Some(id::CONNECTION_CLOSE_OK) => break,
                _ => {}
            }
            s.write_all(&out).expect("answer");
        }
        acks
    }

    #[test]
    fn consumes_acknowledges_in_batches_and_reports_a_broker_close() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let broker = std::thread::spawn(move || fake_broker(l));
        let mut c = Consumer::connect(&Login {
            addr,
            user: "guest",
            password: "guest",
            vhost: "/",
        })
        .expect("connected");
        assert_eq!(c.frame_max, 131_072);
        c.subscribe(&Subscription {
            queue: "q",
            prefetch: 4,
            exclusive: true,
            stream_next: false,
        })
        .expect("consuming");
        let mut bodies = Vec::new();
        let until = Instant::now() + WITHIN;
        let result = consume(
            &mut c,
            4,
            |b| {
                bodies.push(String::from_utf8_lossy(b).into_owned());
                false
            },
            || Some(until),
        );
        let err = result.expect_err("the broker closed the connection");
        assert!(err.contains("320 CONNECTION_FORCED"), "{err}");
        assert_eq!(bodies, ["a", "hello world", "c"]);
        // The first alone, ACK_DELAY after it while the rest was in flight; then a full
        // batch (a prefetch of 4 acknowledges by 2), before the broker's close.
        assert_eq!(broker.join().expect("broker"), [(1, 1), (3, 1)]);
    }

    #[test]
    fn refuses_addresses_off_loopback() {
        let err = Consumer::connect(&Login {
            addr: "192.0.2.1:5672".parse().expect("addr"),
            user: "guest",
            password: "guest",
            vhost: "/",
        })
        .err()
        .expect("refused");
        assert!(err.contains("not a loopback address"), "{err}");
    }

    /// Against the real broker (127.0.0.1:5672, or $GATEWAY_AMQP_URL): a queue of its own,
    /// a few hundred events from the benchmark's publisher, all consumed once by the bare
    /// consumer and acknowledged (the queue is empty once it has gone), then everything
    /// declared is deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumes_a_real_queue_once_and_acknowledges_it_all() {
        let exchange = format!("loadtest.bare-test.{}", crate::run_id());
        let queue = format!("{exchange}.queue");
        let words = ["publish", "--users", "10", "--exchange", &exchange];
        let words = words
            .into_iter()
            .chain(["--rate", "1000", "--duration", "0.3"]);
        let o = match crate::opts::parse(words.map(String::from)) {
            Ok(crate::opts::Parsed::Run(o)) => *o,
            _ => panic!("bad publisher options"),
        };
        let admin = lapin::Connection::connect(&o.amqp_url, lapin::ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (scripts/ensure-rabbitmq.sh)");
        let channel = admin.create_channel().await.expect("channel");
        let outcome = publish_and_consume(&o, &channel, &exchange, &queue).await;
        let left = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| (q.message_count(), q.consumer_count()));
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let _ = admin.close(200, "test done".into()).await;
        let mut seqs = outcome.expect("published and consumed");
        seqs.sort_unstable();
        assert_eq!(seqs, (0..300).collect::<Vec<u64>>(), "every event once");
        assert_eq!(left.expect("the queue"), (0, 0), "all acknowledged");
    }

    async fn publish_and_consume(
        o: &crate::opts::Opts,
        channel: &lapin::Channel,
        exchange: &str,
        queue: &str,
    ) -> Result<Vec<u64>, String> {
        crate::publish::declare_exchange(channel, exchange).await?;
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongLongInt(60_000));
        channel
            .queue_declare(queue.into(), QueueDeclareOptions::default(), args)
            .await
            .map_err(|e| e.to_string())?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "render.job.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let publisher = crate::publish::Publisher::connect(o).await?;
        let (_keep, abort) = tokio::sync::watch::channel(false);
        let rep = publisher
            .run(o, "baretest", crate::publish::Kind::Targeted, abort)
            .await;
        publisher.close().await;
        if !rep.ok() {
            return Err(format!("publish: {rep:?}"));
        }
        let url = AmqpUrl::parse(&o.amqp_url)?;
        let queue = queue.to_owned();
        tokio::task::spawn_blocking(move || consume_all(&url, &queue, rep.published))
            .await
            .map_err(|e| e.to_string())?
    }

    /// The bare consumer on this thread: the `seq` of each event, in order of receipt.
    fn consume_all(url: &AmqpUrl, queue: &str, expect: u64) -> Result<Vec<u64>, String> {
        let mut c = Consumer::connect(&Login {
            addr: url.socket_addr()?,
            user: &url.user,
            password: &url.password,
            vhost: &url.vhost,
        })?;
        c.subscribe(&Subscription {
            queue,
            prefetch: 512,
            exclusive: true,
            stream_next: false,
        })?;
        let mut seqs = Vec::new();
        let until = Instant::now() + WITHIN;
        consume(
            &mut c,
            512,
            |body| {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                seqs.push(v["data"]["seq"].as_u64().unwrap_or(u64::MAX));
                seqs.len() as u64 >= expect
            },
            || Some(until),
        )?;
        c.close()?;
        Ok(seqs)
    }
}
