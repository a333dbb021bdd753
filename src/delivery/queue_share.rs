//! Each target's share of the queue: how many of its deliveries wait (pending or on the
//! wire), and whether a batch about to be accepted still fits under every target's bound,
//! so that one dead or paused receiver cannot fill the queue for everyone.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// A target whose deliveries already fill its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFull {
    pub route: String,
    pub target: String,
    pub max_queued: u64,
}

impl TargetFull {
    /// The answer's `detail`: which target is full, and its bound.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "route": self.route, "target": self.target, "max_queued": self.max_queued })
    }
}

/// Waiting deliveries per route and target (maps by route, then target, so that looking up
/// borrowed names allocates nothing).
#[derive(Debug, Default)]
pub struct TargetQueues {
    waiting: Mutex<HashMap<String, HashMap<String, u64>>>,
}

/// How many deliveries a batch adds per `(route, target)`.
pub type Wanted<'a> = Vec<(&'a str, &'a str, u64)>;

/// Adds one delivery for `(route, target)` to a batch's tally.
pub fn tally<'a>(wanted: &mut Wanted<'a>, route: &'a str, target: &'a str) {
    match wanted.iter_mut().find(|(r, t, _)| *r == route && *t == target) {
        Some((_, _, count)) => *count += 1,
        None => wanted.push((route, target, 1)),
    }
}

impl TargetQueues {
    /// Replaces every count with the store's (`(route, target, waiting)` rows).
    pub fn reset(&self, counts: Vec<(String, String, u64)>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.clear();
        for (route, target, count) in counts {
            waiting.entry(route).or_default().insert(target, count);
        }
    }

    /// How many of the target's deliveries wait.
    #[cfg(test)]
    pub fn waiting(&self, route: &str, target: &str) -> u64 {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.get(route).and_then(|targets| targets.get(target)).copied().unwrap_or(0)
    }

    /// Counts the whole batch in, or nothing when any target would go past its bound
    /// (`bound(route, target)`); a target already past its bound (lowered by a reload) takes
    /// no more until it drains below it.
    pub fn reserve(&self, wanted: &[(&str, &str, u64)], bound: impl Fn(&str, &str) -> u64) -> Result<(), TargetFull> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for &(route, target, count) in wanted {
            let now = waiting.get(route).and_then(|targets| targets.get(target)).copied().unwrap_or(0);
            let max_queued = bound(route, target);
            if now.saturating_add(count) > max_queued {
                return Err(TargetFull { route: route.to_string(), target: target.to_string(), max_queued });
            }
        }
        for &(route, target, count) in wanted {
            let targets = match waiting.get_mut(route) {
                Some(targets) => targets,
                None => waiting.entry(route.to_string()).or_default(),
            };
            match targets.get_mut(target) {
                Some(now) => *now += count,
                None => {
                    targets.insert(target.to_string(), count);
                }
            }
        }
        Ok(())
    }

    /// Takes `count` deliveries of the target out (finished, or never committed).
    pub fn release(&self, route: &str, target: &str, count: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(targets) = waiting.get_mut(route) {
            if let Some(now) = targets.get_mut(target) {
                *now = now.saturating_sub(count);
                if *now == 0 {
                    targets.remove(target);
                }
            }
            if targets.is_empty() {
                waiting.remove(route);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_fits_whole_or_not_at_all() {
        let queues = TargetQueues::default();
        queues.reset(vec![("r".into(), "dead".into(), 2)]);
        let bound = |_: &str, target: &str| if target == "dead" { 3 } else { 10 };
        let mut wanted = Wanted::new();
        tally(&mut wanted, "r", "live");
        tally(&mut wanted, "r", "dead");
        tally(&mut wanted, "r", "dead");
        let full = queues.reserve(&wanted, bound).unwrap_err();
        assert_eq!(full, TargetFull { route: "r".into(), target: "dead".into(), max_queued: 3 });
        // Nothing of the refused batch was counted, the live target included.
        assert_eq!((queues.waiting("r", "live"), queues.waiting("r", "dead")), (0, 2));

        let mut one = Wanted::new();
        tally(&mut one, "r", "dead");
        tally(&mut one, "r", "live");
        queues.reserve(&one, bound).unwrap();
        assert_eq!((queues.waiting("r", "live"), queues.waiting("r", "dead")), (1, 3));
        queues.release("r", "dead", 5);
        assert_eq!(queues.waiting("r", "dead"), 0);
        queues.reserve(&one, bound).unwrap();
        assert_eq!(queues.waiting("r", "dead"), 1);
    }
}
