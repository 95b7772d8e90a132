//! realtime-gateway: RabbitMQ domain events to browsers over WebSocket and SSE.
//!
//! One event's path:
//!
//! ```text
//! broker ──▶ envelope ──▶ dedupe, history, state ──▶ hub ──▶ transport::{ws, sse} ──▶ browser
//! (lapin)    (parse once) (resume, snapshots)         (who)   (frames built once, shared)
//! ```
//!
//! Beside it: [`revocation`] (banned users, fed by the broker's revocation feed),
//! [`config`] (flags and `GATEWAY_*` variables), [`auth`] (token verification),
//! [`telemetry`] (metrics and logs), [`shutdown`] (signals) and [`server`], whose [`run`] is
//! what `main` and the integration tests call. The layers (a module imports only lower
//! ones) and every file's job: `docs/architecture.md`, checked by `tests/architecture.rs`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod dedupe;
pub mod demo;
pub mod envelope;
pub mod history;
pub mod hub;
pub mod mapping;
pub mod revocation;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod transport;

pub use config::Config;
pub use server::{Hooks, StartError, Stopped, bind, run, run_with};
