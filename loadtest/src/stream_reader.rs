//! A reader of a RabbitMQ stream over the **stream protocol** (port 5552), for
//! `loadgen livepath --client stream`: the other way to read the fleet's stream, next to
//! AMQP 0-9-1 consumers of it (`--client lapin|bare`). Frames are encoded and decoded by
//! `rabbitmq-stream-protocol`, the codec of the official client; the official client
//! itself (`rabbitmq-stream-client`) is not used because it pulls in `aws-lc-sys`, a C
//! build this project keeps out. Like the bare AMQP consumer, it runs on the thread that
//! reads its socket, with no runtime: what it costs is reading chunks, not a library's
//! threads.
//!
//! Flow control is the protocol's: the subscription starts with `credit` chunks and asks
//! for one more after each chunk it has read, as the official clients do by default.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rabbitmq_stream_protocol::codec::{Decoder, Encoder};
use rabbitmq_stream_protocol::commands::credit::CreditCommand;
use rabbitmq_stream_protocol::commands::heart_beat::HeartBeatCommand;
use rabbitmq_stream_protocol::commands::open::OpenCommand;
use rabbitmq_stream_protocol::commands::peer_properties::PeerPropertiesCommand;
use rabbitmq_stream_protocol::commands::sasl_authenticate::SaslAuthenticateCommand;
use rabbitmq_stream_protocol::commands::sasl_handshake::SaslHandshakeCommand;
use rabbitmq_stream_protocol::commands::subscribe::{OffsetSpecification, SubscribeCommand};
use rabbitmq_stream_protocol::commands::tune::TunesCommand;
use rabbitmq_stream_protocol::{Request, Response, ResponseKind};

/// The stream protocol's port.
pub const PORT: u16 = 5552;
/// Largest frame accepted from the broker (and offered in `tune`): 1 MiB, the broker's
/// default.
const MAX_FRAME: u32 = 1 << 20;
/// How long the handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How often the loop looks at its deadline while nothing arrives.
const POLL: Duration = Duration::from_millis(100);
/// The only subscription of this connection.
const SUBSCRIPTION: u8 = 1;

/// Who logs in, and where.
pub struct Login<'a> {
    pub addr: SocketAddr,
    pub user: &'a str,
    pub password: &'a str,
    pub vhost: &'a str,
}

/// One connection with one subscription.
pub struct Reader {
    sock: TcpStream,
    /// Bytes read and not yet a whole frame.
    buf: Vec<u8>,
    next_correlation: u32,
}

impl Reader {
    /// Connects, authenticates (PLAIN), tunes and opens the virtual host.
    pub fn connect(login: &Login) -> Result<Reader, String> {
        let sock = TcpStream::connect_timeout(&login.addr, HANDSHAKE)
            .map_err(|e| format!("cannot connect to the stream port {}: {e} (is the rabbitmq_stream plugin enabled?)", login.addr))?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut r = Reader {
            sock,
            buf: Vec::with_capacity(64 * 1024),
            next_correlation: 1,
        };
        let deadline = Instant::now() + HANDSHAKE;
        let c = r.correlation();
        r.send(PeerPropertiesCommand::new(c, HashMap::new()))?;
        r.reply(c, deadline)?;
        let c = r.correlation();
        r.send(SaslHandshakeCommand::new(c))?;
        r.reply(c, deadline)?;
        let c = r.correlation();
        let plain = format!("\0{}\0{}", login.user, login.password).into_bytes();
        r.send(SaslAuthenticateCommand::new(c, "PLAIN".into(), plain))?;
        if !r.generic_ok(c, deadline)? {
            return Err("the stream port refused the login".into());
        }
        // The broker tunes next; the answer takes its heartbeat (this reader answers
        // heartbeats as they come) and the smaller frame size.
        let tune = loop {
            match r.frame(deadline)?.map(Response::kind) {
                Some(ResponseKind::Tunes(t)) => break t,
                Some(_) => continue,
                None => return Err("no tune from the broker".into()),
            }
        };
        r.send(TunesCommand::new(
            // 0 is "no limit" from the broker: this reader's own limit then.
            match tune.max_frame_size {
                0 => MAX_FRAME,
                offered => offered.min(MAX_FRAME),
            },
            tune.heartbeat,
        ))?;
        let c = r.correlation();
        r.send(OpenCommand::new(c, login.vhost.to_owned()))?;
        match r.reply(c, deadline)? {
            ResponseKind::Open(o) if o.is_ok() => Ok(r),
            other => Err(format!("cannot open the virtual host: {other:?}")),
        }
    }

    /// Subscribes to `stream` from its next message, with `credit` chunks in flight.
    pub fn subscribe(&mut self, stream: &str, credit: u16) -> Result<(), String> {
        let c = self.correlation();
        self.send(SubscribeCommand::new(
            c,
            SUBSCRIPTION,
            stream.to_owned(),
            OffsetSpecification::Next,
            credit,
            HashMap::new(),
        ))?;
        if self.generic_ok(c, Instant::now() + HANDSHAKE)? {
            Ok(())
        } else {
            Err(format!("cannot subscribe to {stream}"))
        }
    }

    /// Reads chunks and hands each message's body to `done` until it returns true, or
    /// `end` says the time is up.
    pub fn consume(
        &mut self,
        mut done: impl FnMut(&[u8]) -> bool,
        mut end: impl FnMut() -> Option<Instant>,
    ) -> Result<(), String> {
        loop {
            let now = Instant::now();
            let end_at = end();
            if end_at.is_some_and(|e| now >= e) {
                return Ok(());
            }
            let Some(response) = self.frame(now + POLL)? else {
                continue;
            };
            match response.kind() {
                ResponseKind::Deliver(chunk) => {
                    // The next chunk is asked for first: the broker reads it from disk
                    // while this one is handled.
                    self.send(CreditCommand::new(SUBSCRIPTION, 1))?;
                    for m in &chunk.messages {
                        if done(m.data().unwrap_or_default()) {
                            return Ok(());
                        }
                    }
                }
                ResponseKind::Heartbeat(_) => self.send(HeartBeatCommand::default())?,
                ResponseKind::Close(c) => return Err(format!("the broker closed: {c:?}")),
                _ => {}
            }
        }
    }

    fn correlation(&mut self) -> u32 {
        let c = self.next_correlation;
        self.next_correlation += 1;
        c
    }

    fn send<T>(&mut self, command: T) -> Result<(), String>
    where
        T: Into<Request>,
    {
        let request: Request = command.into();
        let mut out = Vec::with_capacity(request.encoded_size() as usize + 4);
        request
            .encode(&mut out)
            .map_err(|e| format!("cannot encode a frame: {e:?}"))?;
        self.sock
            .write_all(&out)
            .map_err(|e| format!("stream port write: {e}"))
    }

    /// The reply to `correlation`, answering what the broker asks meanwhile.
    fn reply(&mut self, correlation: u32, deadline: Instant) -> Result<ResponseKind, String> {
        loop {
            let Some(r) = self.frame(deadline)? else {
                if Instant::now() >= deadline {
                    return Err("the stream port did not answer in time".into());
                }
                continue;
            };
            if r.correlation_id() == Some(correlation) {
                return Ok(r.kind());
            }
            if let ResponseKind::Heartbeat(_) = r.kind_ref() {
                self.send(HeartBeatCommand::default())?;
            }
        }
    }

    fn generic_ok(&mut self, correlation: u32, deadline: Instant) -> Result<bool, String> {
        Ok(match self.reply(correlation, deadline)? {
            ResponseKind::Generic(g) => g.is_ok(),
            _ => false,
        })
    }

    /// The next whole frame, or `None` when none came by `until`.
    fn frame(&mut self, until: Instant) -> Result<Option<Response>, String> {
        loop {
            if self.buf.len() >= 4 {
                let size = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if size > MAX_FRAME.max(8 << 20) {
                    return Err(format!("a frame of {size} bytes"));
                }
                let whole = 4 + size as usize;
                if self.buf.len() >= whole {
                    let decoded = Response::decode(&self.buf[..whole])
                        .map(|(_, r)| r)
                        .map_err(|e| format!("cannot decode a frame: {e:?}"));
                    self.buf.drain(..whole);
                    return decoded.map(Some);
                }
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            self.sock
                .set_read_timeout(Some(until - now))
                .map_err(|e| e.to_string())?;
            let start = self.buf.len();
            self.buf.resize(start + 64 * 1024, 0);
            match self.sock.read(&mut self.buf[start..]) {
                Ok(0) => return Err("the broker closed the stream connection".into()),
                Ok(n) => self.buf.truncate(start + n),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.buf.truncate(start);
                    return Ok(None);
                }
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(format!("stream port read: {e}"));
                }
            }
        }
    }
}
