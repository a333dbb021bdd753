//! Delivery: compiled targets and their rendering, the shared HTTP client, the retry
//! schedule and the queue that sends `respond: async` deliveries in the background.

pub mod client;
pub mod queue;
pub mod retry;
pub mod target;
