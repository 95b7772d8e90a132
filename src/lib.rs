//! realtime-gateway: RabbitMQ domain events to browsers over WebSocket and SSE.
//!
//! Data flows one way:
//!
//! ```text
//! broker ──▶ envelope ──▶ hub ──▶ transport::{ws, sse} ──▶ browser
//! (lapin)    (parse once) (who)   (frames built once, shared)
//! ```
//!
//! The [`broker`]'s link loop (connect, consume, acknowledge, reconnect) hands each message
//! to its pipeline, which reads it ([`envelope`], [`mapping`], its key from [`keys`]), drops
//! duplicates ([`dedupe`]), keeps it in the [`history`] for resuming clients and fans it
//! out through the [`hub`].
//!
//! Beside that line: [`config`] (flags and `GATEWAY_*` variables), [`auth`] (token
//! verification), [`telemetry`] (metrics and logs), [`shutdown`] (signals) and [`server`],
//! whose [`run`] is what `main` and the integration tests call.

#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod dedupe;
pub mod demo;
pub mod envelope;
pub mod history;
pub mod hub;
pub mod keys;
pub mod mapping;
pub mod revocation;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod transport;

pub use config::Config;
pub use server::{Hooks, StartError, Stopped, bind, run, run_with};
