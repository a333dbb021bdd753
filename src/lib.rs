//! hookrelay: a sidecar reverse-proxy webhook relay. Receives webhooks, matches them against
//! YAML routes, rewrites them with handlebars templates and forwards them; everything else
//! is proxied untouched to the service beside it.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod cases;
pub mod condition;
pub mod config;
pub mod connections;
pub mod context;
pub mod delivery;
pub mod engine;
pub mod feed;
pub mod inbound;
pub mod ingress;
pub mod logwriter;
pub mod metrics;
pub mod plan;
pub mod ratelimit;
pub mod redact;
pub mod relay;
pub mod reload;
pub mod render;
pub mod replay;
pub mod request_log;
pub mod respond;
pub mod routing;
pub mod settings;
pub mod shards;
pub mod signature;
pub mod snapshot;
pub mod store;
pub mod sync_log;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod trace;
pub mod unmatched;
pub mod values;
pub mod verify;
