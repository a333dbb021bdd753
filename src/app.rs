//! Startup: loads the config, opens the store, builds the [`Relay`] and starts the ingress
//! and admin listeners, the watcher and the background tasks; and the handle that stops
//! them. `main` and the tests both start the relay through here.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{env::ProcessEnv, ApiRoute, ConfigErrors};
use crate::delivery::client::{self, Outbound};
use crate::engine::{now_ms, Clock, Engine};
use crate::ratelimit::OutboundLimiters;
use crate::relay::{Relay, RelayParts};
use crate::settings::StoreLocation;
use crate::shards::Shards;
use crate::snapshot::{self, Snapshot};
use crate::store::ownership::{OwnershipError, StoreOwnership};
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};
use crate::unmatched::MAX_KEPT;
use crate::{admin, connections, metrics, reload};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("cannot bind {what} on {addr}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error(transparent)]
    StoreOwner(#[from] OwnershipError),
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("cannot start the connection threads: {0}")]
    Shards(std::io::Error),
}

/// Opens the store with its ownership: a SQLite file is locked to this relay; a PostgreSQL
/// database is shared, and waited for (with backoff) while it cannot be reached, so a relay
/// started before its database neither exits nor restarts in a loop.
async fn open_store(location: &StoreLocation) -> Result<(Arc<dyn Store>, Option<StoreOwnership>), StartError> {
    match location {
        StoreLocation::Sqlite(path) => {
            let mut owner = StoreOwnership::claim(path)?;
            let path = path.clone();
            let opened = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await
                .map_err(|join| StoreError::Corrupt(join.to_string()))??;
            owner.opened();
            Ok((Arc::new(opened), Some(owner)))
        }
        StoreLocation::Postgres(url) => {
            let mut wait = std::time::Duration::from_secs(1);
            loop {
                match PostgresStore::connect(url).await {
                    Ok(store) => return Ok((Arc::new(store), None)),
                    Err(err @ StoreError::Unavailable(_)) => {
                        tracing::warn!(error = %err, store = %location.describe(), retry_in = ?wait, "cannot reach the store yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(30));
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
}

/// Deletes finished events older than `store.retention`, at startup and then hourly.
async fn prune_periodically(store: Arc<dyn Store>, retention: std::time::Duration, mut shutdown: watch::Receiver<bool>) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        match store.prune(now_ms().saturating_sub(retention_ms)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned delivered events past store.retention"),
            Err(err) => tracing::warn!(error = %err, "pruning the store failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How often kept unmatched requests are pruned (past `store.keep_unmatched`, and beyond
/// the newest [`MAX_KEPT`]).
const UNMATCHED_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Prunes kept unmatched requests while `store.keep_unmatched` is set (a reload may set it
/// or take it away; taken away, what was kept goes at once).
async fn prune_unmatched_periodically(relay: Arc<Relay>, mut shutdown: watch::Receiver<bool>) {
    let mut kept_before = false;
    loop {
        let keep = relay.snapshot().settings.keep_unmatched;
        if keep.is_some() || kept_before {
            let window_ms = keep.map_or(0, |keep| i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
            let newest = if keep.is_some() { MAX_KEPT } else { 0 };
            match relay.engine.store().prune_unmatched(now_ms().saturating_sub(window_ms), newest).await {
                Ok(pruned) => {
                    relay.unmatched.pruned();
                    if pruned > 0 {
                        tracing::info!(pruned, "pruned kept unmatched requests");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "pruning kept unmatched requests failed"),
            }
        }
        kept_before = keep.is_some();
        tokio::select! {
            _ = tokio::time::sleep(UNMATCHED_PRUNE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Checks every few seconds that the store file is still the one opened (readiness checks
/// it on every probe too).
async fn watch_store_file(relay: Arc<Relay>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if relay.store_problem().is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Connections the admin listener serves at once (probes, scrapes, operators).
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// A started relay: its bound addresses, and the handle that stops it.
pub struct Running {
    pub ingress_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub relay: Arc<Relay>,
    shutdown: watch::Sender<bool>,
    ingress: tokio::task::JoinHandle<()>,
    telemetry: Option<crate::telemetry::Exporting>,
    /// The threads serving ingress connections, stopped last: deliveries a request started
    /// may run on them until the engine is drained.
    shards: Arc<Shards>,
}

/// The most a stop waits past the grace for the queued log of answered sync requests.
const SYNC_LOG_CLOSING: std::time::Duration = std::time::Duration::from_secs(5);

impl Running {
    /// Signals every task to stop, without waiting.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Graceful stop: no new connections, in-flight requests finish, deliveries on the wire
    /// finish or are handed back, the store is flushed — all within `limits.shutdown_grace`,
    /// but for writing the log of the sync requests answered in it.
    pub async fn shutdown(self) {
        let grace = self.relay.snapshot().settings.limits.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        self.stop();
        // The ingress ends by itself: its connections close when the grace is over.
        let _ = self.ingress.await;
        // Every answered sync request is logged, even when the grace is used up: writing
        // what is queued takes milliseconds.
        self.relay.sync_log.close(deadline.max(tokio::time::Instant::now() + SYNC_LOG_CLOSING)).await;
        self.relay.engine.drain(deadline).await;
        if let Err(err) = self.relay.engine.store().close().await {
            tracing::warn!(error = %err, "closing the store");
        }
        if let Some(owner) = &self.relay.store_owner {
            owner.release();
        }
        if let Some(telemetry) = self.telemetry {
            telemetry.flush(deadline).await;
        }
        self.shards.stop();
        tracing::info!("stopped");
    }
}

/// How to run besides the config file.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Reload when the config files change (otherwise only SIGHUP and `POST /api/reload`).
    pub watch_files: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions { watch_files: true }
    }
}

/// Loads the config at `path` and starts serving on its listeners.
pub async fn start(path: &Path) -> Result<Running, StartError> {
    start_with_options(path, &StartOptions::default()).await
}

pub async fn start_with_options(path: &Path, options: &StartOptions) -> Result<Running, StartError> {
    // Absolute, so the watcher can compare it with the paths file events carry.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let snapshot = snapshot::load(&path, &ProcessEnv)?;
    start_with(&path, snapshot, options).await
}

pub async fn start_with(path: &Path, snapshot: Snapshot, options: &StartOptions) -> Result<Running, StartError> {
    metrics::handle();
    let outbound = Outbound::build(&snapshot.settings.extra_roots)?;
    let telemetry = crate::telemetry::install(snapshot.settings.telemetry.as_ref(), &snapshot.settings.extra_roots)?;
    let listen = snapshot.settings.listen;
    let admin_listen = snapshot.settings.admin.as_ref().map(|a| a.listen);
    let ingress_listener = TcpListener::bind(listen).await.map_err(|source| StartError::Bind { what: "listen", addr: listen, source })?;
    let admin_listener = match admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what: "admin.listen", addr, source })?),
        None => None,
    };
    let ingress_addr = ingress_listener.local_addr().map_err(|source| StartError::Bind { what: "listen", addr: listen, source })?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    connections::raise_descriptor_limit(snapshot.settings.limits.max_connections);
    let (store, store_owner) = open_store(&snapshot.settings.store).await?;
    let outbound_limits =
        Arc::new(if store.shared() { OutboundLimiters::shared_through(store.clone()) } else { OutboundLimiters::default() });
    let api_routes: Vec<ApiRoute> =
        store.list_routes().await?.into_iter().map(|stored| ApiRoute { name: stored.name, definition: stored.definition }).collect();
    let mut startup_error = None;
    let snapshot = if api_routes.is_empty() {
        snapshot
    } else {
        match snapshot::load_with_api_routes(path, &ProcessEnv, &api_routes) {
            Ok(with_api) => with_api,
            Err(errors) => {
                // The file changed under routes created earlier: serve the file's routes and say why.
                tracing::error!(errors = %errors, "routes from the API do not compile with this config; serving without them");
                startup_error = Some(errors.to_string());
                snapshot
            }
        }
    };
    let retention = snapshot.settings.retention;
    let config = Arc::new(ArcSwap::from_pointee(snapshot));
    let (shutdown, receiver) = watch::channel(false);
    let engine =
        Engine::start(Clock::Wall, store.clone(), config.clone(), outbound.clone(), outbound_limits.clone(), 64, receiver.clone()).await?;
    tokio::spawn(prune_periodically(store, retention, receiver.clone()));
    tokio::spawn(metrics::keep_up(receiver.clone()));
    let relay = Arc::new(Relay::new(RelayParts {
        config,
        config_path: path.to_path_buf(),
        outbound,
        engine,
        outbound_limits,
        store_owner,
        api_routes,
        startup_error,
    }));
    tokio::spawn(watch_store_file(relay.clone(), receiver.clone()));
    tokio::spawn(prune_unmatched_periodically(relay.clone(), receiver.clone()));
    if let Some(notices) = relay.engine.store().notices() {
        tokio::spawn(admin::follow_store(relay.clone(), notices, receiver.clone()));
    }
    ::metrics::gauge!(metrics::CONFIG_GENERATION).set(1.0);
    ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => "ok").increment(0);
    let acceptor = match relay.snapshot().settings.tls.is_some() {
        true => Some(crate::tls::acceptor(relay.current_certificate()).map_err(StartError::Tls)?),
        false => None,
    };
    let limits = relay.snapshot().settings.limits.clone();
    let shards = Arc::new(Shards::per_core().map_err(StartError::Shards)?);
    let ingress = connections::Listener {
        listener: ingress_listener,
        acceptor,
        max_connections: limits.max_connections,
        limits: limits.clone(),
        shards: Some(shards.clone()),
    };
    let ingress = tokio::spawn(connections::serve(ingress, relay.clone(), receiver.clone(), |relay, request, peer| async move {
        crate::ingress::handle(&relay, request, peer).await
    }));
    if let Some(listener) = admin_listener {
        let admin_tls = match relay.snapshot().settings.tls.as_ref().filter(|tls| !tls.client_ca.is_empty()) {
            Some(tls) => Some(crate::tls::admin_acceptor(relay.current_certificate(), &tls.client_ca).map_err(StartError::Tls)?),
            None => None,
        };
        let admin = connections::Listener { listener, acceptor: admin_tls, max_connections: ADMIN_MAX_CONNECTIONS, limits, shards: None };
        tokio::spawn(connections::serve(admin, relay.clone(), receiver.clone(), |relay, request, _| async move {
            admin::handle(&relay, request).await
        }));
    }
    if let Err(err) = reload::spawn(relay.clone(), receiver, options.watch_files) {
        tracing::warn!(error = %err, "file watching unavailable; reload with SIGHUP or POST /api/reload");
    }
    for warning in &relay.snapshot().warnings {
        tracing::warn!(warning = %warning, "config warning");
    }
    tracing::info!(%ingress_addr, admin = ?admin_addr, "hookrelay listening");
    Ok(Running { ingress_addr, admin_addr, relay, shutdown, ingress, telemetry, shards })
}
