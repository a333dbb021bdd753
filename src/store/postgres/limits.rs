//! Outbound rate limits shared by every relay on the database: the GCRA state of each key
//! (and, for sliding windows, its last sends) in one row, read and written under the row's
//! lock on the database's clock, so N relays together send no more than one would.

use std::time::Duration;

use deadpool_postgres::Transaction;

use crate::store::{SharedLimit, StoreError};

/// The database's clock in microseconds, or the caller's pinned milliseconds (`$1`).
const NOW_US: &str = "SELECT COALESCE($1::bigint * 1000, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)";

/// The row of `key`, locked for this transaction, created if new.
async fn locked(tx: &Transaction<'_>, key: &str) -> Result<(i64, Vec<i64>, i64), StoreError> {
    tx.execute("INSERT INTO hookrelay_rate_limits (key) VALUES ($1) ON CONFLICT (key) DO NOTHING", &[&key]).await?;
    let row = tx
        .query_one(
            "SELECT theoretical_arrival_us, window_sent_us, paused_until_us FROM hookrelay_rate_limits WHERE key = $1 FOR UPDATE",
            &[&key],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

async fn now_us(tx: &Transaction<'_>, pinned: Option<i64>) -> Result<i64, StoreError> {
    Ok(tx.query_one(NOW_US, &[&pinned]).await?.try_get(0)?)
}

/// One permit of `limit` at `now` (µs), or how long until one: a pause first, then the
/// GCRA (`cells` per `per`, `burst` at once), then the sliding window.
fn decide(limit: SharedLimit, now: i64, arrival: i64, sent: &mut Vec<i64>, paused_until: i64) -> Result<i64, Duration> {
    let micros = |us: i64| Duration::from_micros(u64::try_from(us.max(0)).unwrap_or(0));
    if paused_until > now {
        return Err(micros(paused_until - now));
    }
    let per = limit.per_ms.saturating_mul(1000).max(1);
    let interval = (per / i64::from(limit.cells.max(1))).max(1);
    let tolerance = interval.saturating_mul(i64::from(limit.burst.max(1)) - 1);
    let arrival = arrival.max(now);
    if arrival - now > tolerance {
        return Err(micros(arrival - tolerance - now));
    }
    if limit.window {
        sent.retain(|at| now - at < per);
        if sent.len() >= limit.cells as usize {
            let oldest = sent.iter().copied().min().unwrap_or(now);
            return Err(micros(oldest + per - now));
        }
        sent.push(now);
    }
    Ok(arrival + interval)
}

pub(super) async fn take_permit(
    tx: &Transaction<'_>,
    key: &str,
    limit: SharedLimit,
    pinned: Option<i64>,
) -> Result<Option<Duration>, StoreError> {
    let (arrival, mut sent, paused_until) = locked(tx, key).await?;
    let now = now_us(tx, pinned).await?;
    match decide(limit, now, arrival, &mut sent, paused_until) {
        Ok(next_arrival) => {
            tx.execute(
                "UPDATE hookrelay_rate_limits SET theoretical_arrival_us = $2, window_sent_us = $3 WHERE key = $1",
                &[&key, &next_arrival, &sent],
            )
            .await?;
            Ok(None)
        }
        Err(wait) => Ok(Some(wait)),
    }
}

pub(super) async fn pause(tx: &Transaction<'_>, key: &str, pause: Duration, pinned: Option<i64>) -> Result<(), StoreError> {
    let (_, _, paused_until) = locked(tx, key).await?;
    let until = now_us(tx, pinned).await?.saturating_add(i64::try_from(pause.as_micros()).unwrap_or(i64::MAX / 2));
    if until > paused_until {
        tx.execute("UPDATE hookrelay_rate_limits SET paused_until_us = $2 WHERE key = $1", &[&key, &until]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    fn permits(limit: SharedLimit, times: &[i64]) -> Vec<Result<(), Duration>> {
        let (mut arrival, mut sent) = (0, Vec::new());
        times
            .iter()
            .map(|&now| {
                decide(limit, now, arrival, &mut sent, 0).map(|next| {
                    arrival = next;
                })
            })
            .collect()
    }

    #[test]
    fn five_per_second_with_the_burst_then_one_every_200_ms() {
        let limit = SharedLimit { cells: 5, per_ms: 1000, burst: 5, window: false };
        let at = [0, 0, 0, 0, 0, 0, 200_000];
        let outcome = permits(limit, &at);
        assert!(outcome[..5].iter().all(Result::is_ok));
        assert_eq!(outcome[5], Err(Duration::from_millis(200)));
        assert!(outcome[6].is_ok());
    }

    #[test]
    fn a_window_never_carries_more_than_its_cells() {
        // 2 per second, burst 2, and no sliding second with more than 2.
        let limit = SharedLimit { cells: 2, per_ms: 1000, burst: 2, window: true };
        let outcome = permits(limit, &[0, 10, SECOND / 2, SECOND - 1, SECOND]);
        assert!(outcome[0].is_ok() && outcome[1].is_ok());
        assert!(outcome[2].is_err(), "GCRA alone would allow this one");
        assert_eq!(outcome[3], Err(Duration::from_micros(1)));
        assert!(outcome[4].is_ok());
    }

    #[test]
    fn a_pause_holds_everyone() {
        let limit = SharedLimit { cells: 100, per_ms: 1000, burst: 100, window: false };
        assert_eq!(decide(limit, 0, 0, &mut Vec::new(), 3 * SECOND), Err(Duration::from_secs(3)));
    }
}
