//! realtime-gateway: RabbitMQ domain events to browsers over WebSocket and SSE.
//!
//! One event's path:
//!
//! ```text
//! broker ──▶ envelope ──▶ dedupe, history, state ──▶ hub ──▶ transport::{ws, sse} ──▶ browser
//! (lapin)    (parse once) (resume, snapshots)         (who)   (frames built once, shared)
//! ```
//!
//! The [`broker`]'s link loop (connect, consume, acknowledge, reconnect) hands each message
//! to its pipeline, which reads it ([`envelope`], [`mapping`], its key from [`keys`]), drops
//! duplicates ([`dedupe`]), keeps it in the [`history`] for resuming clients and fans it
//! out through the [`hub`].
//!
//! Beside it: [`revocation`] (banned users, fed by the broker's revocation feed),
//! [`config`] (flags and `GATEWAY_*` variables), [`auth`] (token verification),
//! [`telemetry`] (metrics and logs), [`shutdown`] (signals) and [`server`], whose [`run`] is
//! what `main` and the integration tests call. The layers (a module imports only lower
//! ones) and every file's job: `docs/architecture.md`, checked by `tests/architecture.rs`.

#![forbid(unsafe_code)]

// Private by default: what `main` and the integration tests use is re-exported below or
// lives in the three public modules, so everything else that goes unused is reported.
pub(crate) mod auth;
pub(crate) mod broker;
pub mod config;
pub(crate) mod dedupe;
pub(crate) mod demo;
pub(crate) mod envelope;
pub(crate) mod history;
pub(crate) mod hub;
pub(crate) mod keys;
pub(crate) mod mapping;
pub(crate) mod revocation;
pub(crate) mod server;
pub mod shutdown;
pub(crate) mod state;
pub mod telemetry;
pub(crate) mod transport;

pub use broker::SeamHook;
pub use config::Config;
pub use envelope::Event;
pub use server::{Hooks, StartError, Stopped, bind, run, run_with};
