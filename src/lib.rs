//! realtime-gateway: RabbitMQ domain events to browsers over WebSocket and SSE.
//!
//! Data flows one way:
//!
//! ```text
//! broker ──▶ envelope ──▶ hub ──▶ transport::{ws, sse} ──▶ browser
//! (lapin)    (parse once) (who)   (frames built once, shared)
//! ```
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
pub mod mapping;
pub mod revocation;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod transport;

pub use config::Config;
pub use server::{Hooks, StartError, Stopped, bind, run, run_with};
