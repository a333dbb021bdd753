//! The `LISTEN` side of the shared store: one connection of its own (outside the pool, as
//! `LISTEN` belongs to a session) receiving what other replicas `NOTIFY`, turned into
//! [`StoreNotice`]s. It reconnects with backoff for as long as the store is open, and after
//! every reconnect announces every notice, since whatever was notified meanwhile is lost.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{DUE_CHANNEL, ROUTES_CHANNEL, TARGETS_CHANNEL};
use crate::store::StoreNotice;

const LONGEST_BACKOFF: Duration = Duration::from_secs(30);

/// Listens until `stop` turns true, sending each notice to `notices`.
pub(super) async fn run(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    notices: broadcast::Sender<StoreNotice>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    loop {
        match listen_once(&config, tls.clone(), &notices, &mut stop, !first).await {
            Listened::Stopped => return,
            Listened::Connected(error) => {
                backoff = Duration::from_millis(250);
                tracing::warn!(error = %error, "lost the store's notification connection; reconnecting");
            }
            Listened::NeverConnected(error) => {
                tracing::warn!(error = %error, retry_in = ?backoff, "cannot open the store's notification connection");
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        backoff = (backoff * 2).min(LONGEST_BACKOFF);
    }
}

enum Listened {
    Stopped,
    /// Listened for a while, then the connection failed or was closed.
    Connected(String),
    NeverConnected(tokio_postgres::Error),
}

async fn listen_once(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    notices: &broadcast::Sender<StoreNotice>,
    stop: &mut watch::Receiver<bool>,
    announce: bool,
) -> Listened {
    let (client, mut connection) = match config.connect(tls).await {
        Ok(connected) => connected,
        Err(error) => return Listened::NeverConnected(error),
    };
    // The connection's messages are only read while the stream is polled, so the LISTEN
    // runs beside it.
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {DUE_CHANNEL}; LISTEN {ROUTES_CHANNEL}; LISTEN {TARGETS_CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => match done {
                Ok(()) => {
                    listening = true;
                    if announce {
                        let _ = notices.send(StoreNotice::Due);
                        let _ = notices.send(StoreNotice::RoutesChanged);
                        let _ = notices.send(StoreNotice::TargetsChanged);
                    }
                }
                Err(error) => return Listened::NeverConnected(error),
            },
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    let notice = match note.channel() {
                        ROUTES_CHANNEL => StoreNotice::RoutesChanged,
                        TARGETS_CHANNEL => StoreNotice::TargetsChanged,
                        _ => StoreNotice::Due,
                    };
                    // No receiver yet (still starting) is fine: everything is re-read then.
                    let _ = notices.send(notice);
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Listened::Connected(error.to_string()),
                None => return Listened::Connected("closed by the server".to_string()),
            },
            _ = stop.wait_for(|stopped| *stopped) => return Listened::Stopped,
        }
    }
}
