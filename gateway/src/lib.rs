//! Switchyard: a programmable edge gateway built on pingora.
//!
//! The binary `gateway` (see `main.rs`) reads a configuration ([`config`]), compiles it
//! into a route table ([`router`]) and upstreams ([`upstream`]), and serves it with
//! pingora: [`downstream`] guards each client connection, [`proxy`] runs the request
//! phases, [`admin`] serves the admin listener, [`server`] ties them together.

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod config;
pub mod demo;
pub mod downstream;
pub mod filters;
pub mod gslb;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod resource;
pub mod retry_budget;
pub mod router;
pub mod server;
pub mod server_name;
pub mod state;
pub mod stream;
pub mod tiers;
pub mod tls;
pub mod upstream;
