//! Integration tests: the real relay on 127.0.0.1:0, a real sink, real files on disk.

mod api_routes;
mod architecture;
mod breakers;
mod browser;
mod cli;
mod console;
mod delivery;
mod escaping;
mod examples;
mod forwarding;
mod fuzz_regressions;
mod golden;
mod hardening;
mod limits;
mod postgres;
mod postgres_cluster;
mod ratelimits;
mod reload;
mod replay;
mod robustness;
mod security;
mod sidecar;
mod signing;
mod support;
mod tls;
mod trace_context;
