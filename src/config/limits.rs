//! Limits whose settings depend on one another or on the machine: connection counts,
//! event and queue sizes, the resume history, and shutdown timing.

use std::time::Duration;

use super::settings::Key;
use super::validate::Validator;

/// Limits of the history; the first one reached evicts the oldest events.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Events kept.
    pub max_events: usize,
    /// Bytes of envelopes kept.
    pub max_bytes: usize,
    /// Oldest event kept.
    pub max_age: Duration,
}

/// The stream every instance backfills its history from.
#[derive(Clone, Debug)]
pub struct HistoryStream {
    /// Stream (queue) name, shared by the fleet.
    pub name: String,
    /// `x-max-age`: the history's age.
    pub max_age: Duration,
    /// `x-max-length-bytes`.
    pub max_bytes: u64,
}

/// Largest values accepted, each far above any sane setting: they catch a typo (an extra
/// digit, bytes given as KiB) before it becomes an allocation or a limit nothing enforces.
/// Pending sockets: each is a descriptor and a task; a million exceeds any open-file limit.
const MAX_PENDING_CONNECTIONS: usize = 1_000_000;
/// Connections of one instance: ten times the largest open-file limits seen in practice.
const MAX_CONNECTIONS: usize = 10_000_000;
/// An event is held in memory whole and framed twice (WS and SSE); 16 MiB is beyond any
/// browser notification and RabbitMQ's own default frame limits.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// Bytes waiting per connection, multiplied by every slow connection: 1 GiB each.
const MAX_SEND_QUEUE_BYTES: usize = 1 << 30;
/// Events kept for resumes, each with its index entries.
const MAX_HISTORY_EVENTS: usize = 10_000_000;
/// Bytes of history kept: 16 GiB, more than an instance's memory.
const MAX_HISTORY_BYTES: usize = 1 << 34;
/// RabbitMQ's limit on a queue (and so a stream) name, in bytes.
pub(super) const MAX_QUEUE_NAME_BYTES: usize = 255;

/// Descriptors kept back for the listener, the broker link, logs and JWKS fetches.
const RESERVED_FDS: usize = 128;
/// Used when the open-file limit cannot be read.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;

pub(super) struct ConnectionLimits {
    pub(super) total: usize,
    pub(super) pending: usize,
    pub(super) pending_per_address: Option<usize>,
}

pub(super) struct EventSizes {
    pub(super) max_event_bytes: usize,
    pub(super) send_queue_bytes: usize,
}

pub(super) struct ShutdownTiming {
    pub(super) grace: Duration,
    pub(super) drain: Duration,
}

impl Validator<'_> {
    pub(super) fn connection_limits(&mut self) -> ConnectionLimits {
        let pending = self.count::<usize>(Key::MaxPendingConnections, MAX_PENDING_CONNECTIONS);
        let total = match self.optional(Key::MaxConnections) {
            Some(_) => self.count::<usize>(Key::MaxConnections, MAX_CONNECTIONS),
            None => default_max_connections(pending),
        };
        let pending_per_address = self
            .optional(Key::MaxPendingPerAddress)
            .map(|_| self.count::<usize>(Key::MaxPendingPerAddress, pending));
        ConnectionLimits {
            total,
            pending,
            pending_per_address,
        }
    }

    pub(super) fn event_sizes(&mut self) -> EventSizes {
        let max_event_bytes = self.count::<usize>(Key::MaxEventBytes, MAX_EVENT_BYTES);
        let send_queue_bytes = self.count::<usize>(Key::SendQueueBytes, MAX_SEND_QUEUE_BYTES);
        if send_queue_bytes < max_event_bytes {
            // Otherwise one large event would kick every recipient as a slow client.
            let max_env = Key::MaxEventBytes.setting().env;
            self.problem(
                Key::SendQueueBytes,
                format_args!("{send_queue_bytes} must be at least {max_env} ({max_event_bytes})"),
            );
        }
        EventSizes {
            max_event_bytes,
            send_queue_bytes,
        }
    }

    pub(super) fn history(&mut self) -> HistoryLimits {
        HistoryLimits {
            max_events: self.count::<usize>(Key::HistoryMaxEvents, MAX_HISTORY_EVENTS),
            max_bytes: self.count::<usize>(Key::HistoryMaxBytes, MAX_HISTORY_BYTES),
            max_age: self.secs(Key::HistoryMaxAgeSecs),
        }
    }

    /// The history stream, `None` when switched off.
    pub(super) fn history_stream(&mut self, history: &HistoryLimits) -> Option<HistoryStream> {
        let name = self.list(Key::HistoryStream).into_iter().next()?;
        if name.len() > MAX_QUEUE_NAME_BYTES || name.starts_with("amq.") {
            self.problem(
                Key::HistoryStream,
                "must be at most 255 bytes and not start with `amq.`",
            );
        }
        Some(HistoryStream {
            name,
            max_age: history.max_age,
            max_bytes: self.count::<u64>(Key::HistoryStreamMaxBytes, u64::MAX),
        })
    }

    pub(super) fn shutdown_timing(&mut self) -> ShutdownTiming {
        let grace = self.secs(Key::ShutdownGraceSecs);
        let drain = match self.parsed::<u64>(Key::ShutdownDrainSecs, "a whole number of seconds") {
            Some(v) if Duration::from_secs(v) < grace => Duration::from_secs(v),
            Some(v) => {
                let grace_env = Key::ShutdownGraceSecs.setting().env;
                self.problem(
                    Key::ShutdownDrainSecs,
                    format_args!("{v} must be less than {grace_env} ({})", grace.as_secs()),
                );
                Duration::ZERO
            }
            None => Duration::ZERO,
        };
        ShutdownTiming { grace, drain }
    }
}

/// Sized for the machine: each connection holds one descriptor, so the soft open-file
/// limit is the real ceiling; refusing with 503 below it beats failing `accept`.
/// What the open-file soft limit leaves for clients after the reserve and the pending
/// sockets, so admitted connections can never be starved of descriptors by silent ones.
fn default_max_connections(max_pending: usize) -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<usize>().ok())
        })
        .map(|soft| soft.saturating_sub(RESERVED_FDS + max_pending).max(1))
        .unwrap_or(FALLBACK_MAX_CONNECTIONS)
}
