//! Delivery: compiled targets and their rendering, the shared HTTP client, the retry
//! schedule, and the engine that sends stored deliveries in the background.

pub mod answers;
pub mod attempt;
pub mod client;
pub mod credentials;
pub mod engine;
pub mod guard;
pub mod preset;
pub mod request;
pub mod retry;
pub mod sign;
pub mod target;
pub mod verdict;
