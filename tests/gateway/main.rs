//! End-to-end tests against a real RabbitMQ (one test binary). Each test starts its own
//! gateway in-process on port 0 with its own exchange and queue, so tests run in parallel.
//!
//! Negative checks ("X never reaches C") do not wait for silence: after the events under
//! test, a marker event is published to every client, and each client must see exactly the
//! expected ids before its marker. Per-connection order is guaranteed, so anything
//! misrouted would show up before the marker.

mod auth;
mod brokers;
mod compression;
mod connection;
mod continuity;
mod delivery;
mod delivery_control;
mod resilience;
mod resume;
mod revocation;
mod security;
mod shapes;
mod shards;
mod state;
mod support;
