//! The publisher: catalog envelopes to the topic exchange at a fixed rate, with publisher
//! confirms, each carrying its sequence number and publish time in `data`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::opts::Opts;
use crate::slow::{COMPLETED, Step};

/// Who event `seq` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Event k goes to user k % users (of tenant user % tenants).
    Targeted,
    /// Event k goes to every connection of tenant k % tenants.
    Broadcast,
    /// Events for users that are not connected (nobody here receives them), except the
    /// last one, for user 0: it arrives after the gateway has ingested all the others,
    /// since one queue keeps their order, so it marks the end of the ingest window.
    Unrouted,
    /// Render jobs: every job's progress ticks, interleaved, then every job's completion
    /// (see `slow::Step`); job j is for user j % users.
    Slow,
}

/// The recipient of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every connection of user i.
    User(usize),
    /// Every connection of the tenant.
    Tenant,
    /// A user with no connection (`<prefix>absent-<n>`).
    Absent(u64),
}

/// Distinct absent users the unrouted events cycle through.
const ABSENT_USERS: u64 = 100_000;

impl Kind {
    /// (tenant index, recipient) of event `seq`.
    pub fn target(self, o: &Opts, seq: u64) -> (usize, Target) {
        match self {
            Kind::Targeted => {
                let u = (seq % o.users as u64) as usize;
                (u % o.tenants, Target::User(u))
            }
            Kind::Broadcast => ((seq % o.tenants as u64) as usize, Target::Tenant),
            Kind::Unrouted if seq + 1 == o.planned_events() => (0, Target::User(0)),
            Kind::Unrouted => (
                (seq % o.tenants as u64) as usize,
                Target::Absent(seq % ABSENT_USERS),
            ),
            Kind::Slow => {
                let u = (Step::of(o, seq).job() % o.users as u64) as usize;
                (u % o.tenants, Target::User(u))
            }
        }
    }

    /// Events among the first `published` that a connection of user `u` must receive.
    pub fn expected_for_user(self, o: &Opts, u: usize, published: u64) -> u64 {
        let (n, i) = match self {
            Kind::Targeted => (o.users as u64, u as u64),
            Kind::Broadcast => (o.tenants as u64, (u % o.tenants) as u64),
            Kind::Unrouted => return u64::from(u == 0 && published >= o.planned_events()),
            Kind::Slow if published >= o.planned_events() => {
                let jobs = crate::slow::jobs_of_user(o.jobs, o.users as u64, u as u64);
                return jobs * (o.ticks + 1);
            }
            Kind::Slow => {
                return (0..published)
                    .filter(|s| self.is_for_user(o, u, *s))
                    .count() as u64;
            }
        };
        published / n + u64::from(i < published % n)
    }

    /// Whether event `seq` belongs to user `u`.
    pub fn is_for_user(self, o: &Opts, u: usize, seq: u64) -> bool {
        match self {
            Kind::Targeted => seq % o.users as u64 == u as u64,
            Kind::Broadcast => seq % o.tenants as u64 == (u % o.tenants) as u64,
            Kind::Unrouted => u == 0 && seq + 1 == o.planned_events(),
            Kind::Slow => Step::of(o, seq).job() % o.users as u64 == u as u64,
        }
    }

    /// Routing key and `event_type` of event `seq`.
    pub fn event_type(self, o: &Opts, seq: u64) -> &str {
        if self == Kind::Slow && matches!(Step::of(o, seq), Step::Completed { .. }) {
            COMPLETED
        } else {
            &o.routing_key
        }
    }
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-23T10:15:00.123456Z`.
pub fn rfc3339_us(us: u64) -> String {
    let secs = us / 1_000_000;
    let micros = us % 1_000_000;
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by 400-year eras
    // starting on March 1st so the leap day comes last.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

/// The envelope of event `seq`. Names were validated to need no JSON escaping.
pub fn envelope(o: &Opts, run: &str, kind: Kind, seq: u64, pad: &str) -> String {
    let (t, u) = kind.target(o, seq);
    let tenant = o.tenant_name(t);
    let user = match u {
        Target::User(u) => format!(r#""user_id":"{}","#, o.user_name(u)),
        Target::Absent(n) => format!(r#""user_id":"{}absent-{n}","#, o.user_prefix),
        Target::Tenant => String::new(),
    };
    let sent_us = now_us();
    // One job per event, so conflation of a job's progress does not thin out what the
    // load generator counts; slow mode's jobs take many events each, on purpose.
    let (job, progress) = match kind {
        Kind::Slow => match Step::of(o, seq) {
            Step::Progress { job, tick } => (job, format!(r#","progress":{tick}"#)),
            Step::Completed { job } => (job, String::new()),
        },
        _ => (seq, format!(r#","progress":{}"#, seq % 101)),
    };
    let pad = if pad.is_empty() {
        String::new()
    } else {
        format!(r#","pad":"{pad}""#)
    };
    format!(
        concat!(
            r#"{{"event_id":"lt-{run}-{seq}","event_type":"{rk}","event_time":"{time}","#,
            r#""tenant_id":"{tenant}",{user}"trace_id":"lt-{run}-t{seq}","#,
            r#""correlation_id":"lt-{run}-c{seq}","producer":"loadgen","#,
            r#""data":{{"run":"{run}","seq":{seq},"sent_us":{sent_us},"#,
            r#""job_id":"job-{job}"{progress}{pad}}}}}"#
        ),
        run = run,
        seq = seq,
        rk = kind.event_type(o, seq),
        time = rfc3339_us(sent_us),
        tenant = tenant,
        user = user,
        sent_us = sent_us,
        job = job,
        progress = progress,
        pad = pad,
    )
}

/// What the publisher did.
#[derive(Clone, Debug, Default)]
pub struct PublishReport {
    pub planned: u64,
    /// basic.publish calls that succeeded (events that may reach the gateway).
    pub published: u64,
    /// Acknowledged by the broker.
    pub confirmed: u64,
    /// Negatively acknowledged by the broker.
    pub nacked: u64,
    /// Acknowledged but returned as unroutable (no queue bound: is the gateway consuming
    /// this exchange?).
    pub unroutable: u64,
    /// Confirms not received in time.
    pub unconfirmed: u64,
    pub errors: Vec<String>,
    /// From the first to the last publish.
    pub secs: f64,
    /// Worst delay behind the schedule, ms.
    pub max_lag_ms: f64,
    pub aborted: bool,
    /// The bare writer's own figures, when the floor produced the events.
    pub floor: Option<serde_json::Value>,
}

impl PublishReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.published == self.planned
            && self.nacked == 0
            && self.unroutable == 0
            && self.unconfirmed == 0
    }
}

/// Awaits every confirm in order: (acked, nacked, acked but returned as unroutable).
async fn confirm_all(mut rx: mpsc::UnboundedReceiver<PublisherConfirm>) -> (u64, u64, u64) {
    let (mut acked, mut nacked, mut returned) = (0u64, 0u64, 0u64);
    while let Some(c) = rx.recv().await {
        match c.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => acked += 1,
            Ok(Confirmation::Ack(Some(_))) => {
                acked += 1;
                returned += 1;
            }
            Ok(Confirmation::Nack(_)) | Err(_) => nacked += 1,
        }
    }
    (acked, nacked, returned)
}

/// The confirms' outcome into the report, waiting at most 10 s for the last ones.
async fn count_confirms(rep: &mut PublishReport, confirmer: JoinHandle<(u64, u64, u64)>) {
    match tokio::time::timeout(Duration::from_secs(10), confirmer).await {
        Ok(Ok((acked, nacked, returned))) => {
            rep.confirmed = acked;
            rep.nacked = nacked;
            rep.unroutable = returned;
            rep.unconfirmed = rep.published.saturating_sub(acked + nacked);
        }
        _ => {
            rep.unconfirmed = rep.published;
            rep.errors
                .push("publisher confirms did not arrive within 10 s".into());
        }
    }
}

/// Declares `name` as the gateway does: a durable topic exchange.
pub async fn declare_exchange(channel: &Channel, name: &str) -> Result<(), String> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot declare exchange {name}: {e}"))
}

pub struct Publisher {
    conn: Connection,
    channel: Channel,
}

impl Publisher {
    /// Connects, declares the exchange as the gateway does (durable topic) and turns on
    /// publisher confirms.
    pub async fn connect(o: &Opts) -> Result<Publisher, String> {
        let fut = async {
            let conn = Connection::connect(&o.amqp_url, ConnectionProperties::default())
                .await
                .map_err(|e| format!("cannot connect to RabbitMQ: {e}"))?;
            let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
            declare_exchange(&channel, &o.exchange).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Publisher { conn, channel })
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "RabbitMQ: connect timed out after 10 s".to_owned())?
    }

    /// Publishes `planned` events at `o.rate` per second, starting now: event k is due at
    /// (k+1)/rate seconds. Every millisecond it publishes whatever is due, so any rate
    /// works, below 1/s too. Stops early on `abort`, or when it falls more than 30 s
    /// behind.
    pub async fn run(
        &self,
        o: &Opts,
        run: &str,
        kind: Kind,
        mut abort: watch::Receiver<bool>,
    ) -> PublishReport {
        let planned = o.planned_events();
        let mut rep = PublishReport {
            planned,
            ..PublishReport::default()
        };
        let pad = "x".repeat(o.pad);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };

        // Confirms are awaited by a separate task, in order, so the ticker never waits.
        let (ctx, crx) = mpsc::unbounded_channel::<PublisherConfirm>();
        let confirmer = tokio::spawn(confirm_all(crx));

        let start = Instant::now();
        let give_up = o.duration + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_publish = start;
        'outer: while rep.published < planned {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::conn::stopped(&mut abort) => { rep.aborted = true; break; }
            }
            let elapsed = start.elapsed();
            if elapsed > give_up {
                rep.errors.push(format!(
                    "publisher fell behind: {} of {planned} published after {:.1} s",
                    rep.published,
                    elapsed.as_secs_f64()
                ));
                break;
            }
            let due = ((o.rate * elapsed.as_secs_f64()).floor() as u64).min(planned);
            if due > rep.published {
                // Lag: how late the oldest event of this batch is.
                let first_due = (rep.published + 1) as f64 / o.rate;
                rep.max_lag_ms = rep
                    .max_lag_ms
                    .max((elapsed.as_secs_f64() - first_due).max(0.0) * 1000.0);
            }
            while rep.published < due {
                let seq = rep.published;
                let body = envelope(o, run, kind, seq, &pad);
                match self
                    .channel
                    .basic_publish(
                        o.exchange.as_str().into(),
                        kind.event_type(o, seq).into(),
                        options,
                        body.as_bytes(),
                        props.clone(),
                    )
                    .await
                {
                    Ok(confirm) => {
                        let _ = ctx.send(confirm);
                        rep.published += 1;
                        last_publish = Instant::now();
                    }
                    Err(e) => {
                        rep.errors.push(format!("basic.publish #{seq}: {e}"));
                        break 'outer;
                    }
                }
            }
        }
        rep.secs = last_publish.duration_since(start).as_secs_f64();
        drop(ctx);
        count_confirms(&mut rep, confirmer).await;
        rep
    }

    pub async fn close(&self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            self.conn.close(200, "loadgen done".into()),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_us(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-23T10:15:00.123456Z
        assert_eq!(
            rfc3339_us(1_795_428_900_123_456),
            "2026-11-23T10:15:00.123456Z"
        );
        // Leap day 2024-02-29T23:59:59Z
        assert_eq!(
            rfc3339_us(1_709_251_199_000_000),
            "2024-02-29T23:59:59.000000Z"
        );
    }
}
