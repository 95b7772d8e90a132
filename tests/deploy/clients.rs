//! Clients that behave like browsers behind a load balancer: they reconnect whenever their
//! connection ends or is refused, resume from the last event id they saw (WebSocket with
//! `last_event_id`, SSE with `Last-Event-ID`), and record every event and `resync` they get,
//! so a test can check the stream each one ended with.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// What a client got, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Event(String),
    Resync,
}

/// A client's record, shared with its task.
#[derive(Debug, Default)]
pub struct Record {
    pub items: Vec<Item>,
    /// Successful connects (a handshake or an SSE 200), the first one included.
    pub connects: u32,
    /// Attempts refused or failed before a stream started.
    pub refusals: u32,
    /// The HTTP status of each refusal that had one (the proxy's or the gateway's answer),
    /// in order: a 502 or 503 that reached a client means the proxy found no instance to
    /// take it.
    pub refusal_statuses: Vec<u16>,
}

impl Record {
    fn refused(&mut self, status: Option<u16>) {
        self.refusals += 1;
        self.refusal_statuses.extend(status);
    }

    fn last_event(&self) -> Option<String> {
        self.items.iter().rev().find_map(|i| match i {
            Item::Event(id) => Some(id.clone()),
            Item::Resync => None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ws,
    Sse,
}

/// A reconnecting client running in its own task until `stop`.
pub struct Client {
    pub name: String,
    pub record: Arc<Mutex<Record>>,
    task: JoinHandle<()>,
}

impl Client {
    /// Starts a client of `kind` against `base` (the load balancer's `http://` address).
    pub fn start(
        kind: Kind,
        name: &str,
        base: &str,
        token: String,
        stop: watch::Receiver<bool>,
    ) -> Client {
        let record = Arc::new(Mutex::new(Record::default()));
        let task = tokio::spawn(run(kind, base.to_owned(), token, record.clone(), stop));
        Client {
            name: name.to_owned(),
            record,
            task,
        }
    }

    pub fn connects(&self) -> u32 {
        self.record.lock().unwrap().connects
    }

    pub fn events(&self) -> usize {
        self.items()
            .iter()
            .filter(|i| matches!(i, Item::Event(_)))
            .count()
    }

    pub fn items(&self) -> Vec<Item> {
        self.record.lock().unwrap().items.clone()
    }

    pub fn last_event(&self) -> Option<String> {
        self.record.lock().unwrap().last_event()
    }

    pub fn refusal_statuses(&self) -> Vec<u16> {
        self.record.lock().unwrap().refusal_statuses.clone()
    }

    /// Waits for the task to notice `stop`.
    pub async fn join(self) {
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("client task did not stop")
            .unwrap();
    }
}

async fn run(
    kind: Kind,
    base: String,
    token: String,
    record: Arc<Mutex<Record>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let resume = record.lock().unwrap().last_event();
        let session = async {
            match kind {
                Kind::Ws => ws_session(&base, &token, resume, &record).await,
                Kind::Sse => sse_session(&base, &token, resume, &record).await,
            }
        };
        let pause = tokio::select! {
            p = session => p,
            _ = stop.wait_for(|s| *s) => return,
        };
        // A short, jittered pause, as a browser client's backoff would (kept short so the
        // test is quick; the gateway's own retry hint is honoured up to a second).
        let jitter = Duration::from_millis(rand::random_range(0..100));
        tokio::select! {
            _ = tokio::time::sleep(pause.min(Duration::from_secs(1)) + jitter) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One WebSocket connection, until it ends; returns the pause before the next attempt.
async fn ws_session(
    base: &str,
    token: &str,
    resume: Option<String>,
    record: &Mutex<Record>,
) -> Duration {
    let mut url = format!("{}/ws?access_token={token}", base.replacen("http", "ws", 1));
    if let Some(id) = resume {
        url.push_str("&last_event_id=");
        url.extend(form_urlencoded::byte_serialize(id.as_bytes()));
    }
    let mut ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let status = match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
                _ => None,
            };
            record.lock().unwrap().refused(status);
            return Duration::from_millis(200);
        }
    };
    record.lock().unwrap().connects += 1;
    // Pings are answered by tungstenite while reading; a peer gone silent is the gateway's
    // or the proxy's to time out, and the test's deadline bounds everything.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(text)) => {
                let v: Value = serde_json::from_str(&text).expect("JSON text frame");
                let item = match (v["event_id"].as_str(), v["type"].as_str()) {
                    (Some(id), _) => Item::Event(id.to_owned()),
                    (None, Some("resync")) => Item::Resync,
                    _ => continue,
                };
                record.lock().unwrap().items.push(item);
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Duration::from_millis(100)
}

/// One SSE stream, until it ends; returns the pause before the next attempt (the stream's
/// last `retry:` hint, as `EventSource` would).
async fn sse_session(
    base: &str,
    token: &str,
    resume: Option<String>,
    record: &Mutex<Record>,
) -> Duration {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut req = http.get(format!("{base}/sse")).bearer_auth(token);
    if let Some(id) = resume {
        req = req.header("last-event-id", id);
    }
    let resp = match req.send().await {
        Ok(r) if r.status() == 200 => r,
        refused => {
            let status = refused.ok().map(|r| r.status().as_u16());
            record.lock().unwrap().refused(status);
            return Duration::from_millis(200);
        }
    };
    record.lock().unwrap().connects += 1;
    let mut retry = Duration::from_millis(300);
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream"));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = Some(value.to_owned()),
                    "event" => event = Some(value.to_owned()),
                    "data" => data = Some(value.to_owned()),
                    "retry" => {
                        if let Ok(ms) = value.parse() {
                            retry = Duration::from_millis(ms);
                        }
                    }
                    _ => {}
                }
            }
            let item = match (event.as_deref(), id, data) {
                (None, Some(id), Some(_)) => Item::Event(id),
                (Some("resync"), _, _) => Item::Resync,
                _ => continue,
            };
            record.lock().unwrap().items.push(item);
        }
    }
    retry
}

/// Checks one client's stream against everything published, in order: every event once and
/// in order, except that a gap is allowed right after an explicit `resync` (the gateway
/// said events may be missing); and the stream must reach the last event, so a client
/// that stayed disconnected fails.
pub fn check_stream(name: &str, items: &[Item], published: &[String]) -> Result<(), String> {
    let position: std::collections::HashMap<&str, usize> = published
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut next = 0;
    let mut resynced = false;
    for item in items {
        match item {
            Item::Resync => resynced = true,
            Item::Event(id) => {
                let Some(&at) = position.get(id.as_str()) else {
                    return Err(format!("{name}: got {id}, which was never published"));
                };
                if at < next {
                    return Err(format!(
                        "{name}: {id} (#{at}) again or out of order after #{}",
                        next - 1
                    ));
                }
                if at > next && !resynced {
                    return Err(format!(
                        "{name}: events #{next}..#{} missing before {id} without a resync",
                        at - 1
                    ));
                }
                next = at + 1;
                resynced = false;
            }
        }
    }
    if next != published.len() {
        return Err(format!(
            "{name}: ended at #{next} of {} published events",
            published.len()
        ));
    }
    Ok(())
}

#[test]
fn the_stream_check_accepts_gaps_only_after_resync() {
    let p: Vec<String> = (0..4).map(|i| format!("e{i}")).collect();
    let e = |i: usize| Item::Event(format!("e{i}"));
    assert!(check_stream("ok", &[e(0), e(1), e(2), e(3)], &p).is_ok());
    assert!(check_stream("resync", &[e(0), Item::Resync, e(3)], &p).is_ok());
    assert!(check_stream("gap", &[e(0), e(2), e(3)], &p).is_err());
    assert!(check_stream("dup", &[e(0), e(1), e(1), e(2), e(3)], &p).is_err());
    assert!(check_stream("order", &[e(0), e(2), e(1), e(3)], &p).is_err());
    assert!(check_stream("short", &[e(0), e(1)], &p).is_err());
    assert!(check_stream("after", &[e(0), e(2), Item::Resync, e(3)], &p).is_err());
}
