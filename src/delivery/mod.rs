//! Delivery: compiled targets and their rendering, credentials and signing, the shared
//! HTTP client and its guard, one attempt and its verdict, the retry schedule, the
//! per-target circuit breaker and share of the queue. The engine
//! that sends stored deliveries in the background is [`crate::engine`].

pub mod answers;
pub mod attempt;
pub mod breaker;
pub mod client;
pub mod credentials;
pub mod guard;
pub mod link;
pub mod preset;
pub mod queue_share;
pub mod request;
pub mod retry;
pub mod sign;
pub mod target;
pub mod verdict;
