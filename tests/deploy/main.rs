//! Deployment tests: the shipped load-balancer configurations run by Debian's nginx and
//! HAProxy in front of real gateway processes during a rolling restart, and the shipped
//! Prometheus rules evaluated by a real Prometheus scraping real gateways. Everything listens
//! on 127.0.0.1; the tools come from `scripts/ensure-deploy-tools.sh`, which the test
//! command runs first.

mod cli;
mod clients;
mod forwarding;
mod harness;
mod prometheus;
mod proxies;
#[path = "../gateway/support.rs"]
mod support;
