//! The running relay: shared state (config snapshot, client, store and delivery engine,
//! status) and startup
//! of the ingress and admin listeners. `main` and the tests both start it through here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, env::ProcessEnv, ApiRoute, ConfigErrors, Snapshot};
use crate::delivery::client::{self, Outbound};
use crate::delivery::engine::{now_ms, Engine};
use crate::ratelimit::{IngressLimiters, OutboundLimiters};
use crate::store::ownership::{OwnershipError, StoreOwnership};
use crate::store::{SqliteStore, Store, StoreError};
use crate::{admin, connections, metrics, reload};

/// What `GET /api/status` reports about the config.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigStatus {
    pub generation: u64,
    pub loaded_at: DateTime<Utc>,
    /// The last failed reload's errors, until a good reload clears them.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Settings that changed in the file but only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new snapshot is serving.
    Reloaded { generation: u64 },
    /// The files hold the same bytes as the snapshot serving now.
    Unchanged { generation: u64 },
}

pub struct Relay {
    config: Arc<ArcSwap<Snapshot>>,
    pub config_path: PathBuf,
    pub outbound: Outbound,
    pub engine: Arc<Engine>,
    /// Rate-limit buckets outlive config snapshots: a reload keeps unchanged ones.
    pub outbound_limits: Arc<OutboundLimiters>,
    pub ingress_limits: IngressLimiters,
    status: Mutex<ConfigStatus>,
    started_with: StartupSettings,
    api_routes: Mutex<Vec<ApiRoute>>,
    /// Sync deliveries being logged after their answer, at most this many at once.
    pub sync_log_slots: Arc<tokio::sync::Semaphore>,
    /// `limits.max_buffered_bytes`, in KiB: request bodies held in memory at once.
    buffered_kib: Arc<tokio::sync::Semaphore>,
    /// Serialises route changes made through the API (check, persist, swap).
    pub api_lock: tokio::sync::Mutex<()>,
    /// This relay's claim on its store, and whether the file is still the one opened.
    pub store_owner: StoreOwnership,
    /// The bearer token the admin listener requires. A reload may set or change it, never
    /// remove it: the listener stays bound where it was, so only a restart may loosen it.
    admin_token: Mutex<Option<Arc<str>>>,
}

impl Relay {
    /// The current snapshot; a request loads it once and uses it throughout.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load_full()
    }

    pub fn status(&self) -> ConfigStatus {
        self.lock_status().clone()
    }

    /// Reserves room for a request body of up to `bytes` under `limits.max_buffered_bytes`;
    /// `None` when the relay holds as much as it may (the request is refused before reading).
    pub fn reserve_body(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        self.buffered_kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// The token `/api/*` and `/metrics` require now, if any.
    pub fn admin_token(&self) -> Option<Arc<str>> {
        self.admin_token.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Applies a new snapshot's `admin.token`: a new value at once, a removal never (it is
    /// reported as needing a restart).
    fn tighten_admin_token(&self, settings: &config::Settings) -> Option<String> {
        let mut current = self.admin_token.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match (settings.admin.as_ref().and_then(|a| a.token.as_deref()), current.as_ref()) {
            (Some(token), _) => {
                *current = Some(Arc::from(token));
                None
            }
            (None, Some(_)) => {
                Some("admin.token removed: the admin listener keeps requiring the previous token until a restart".to_string())
            }
            (None, None) => None,
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, ConfigStatus> {
        // Status updates are single assignments, consistent even after a panic elsewhere.
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads and compiles the config again with the same function as startup; swaps it in
    /// only if it compiles completely. Blocking (file I/O): call from a blocking context.
    pub fn reload(&self) -> Result<ReloadOutcome, ConfigErrors> {
        let api_routes = self.api_routes();
        self.install(config::load_with_api_routes(&self.config_path, &ProcessEnv, &api_routes))
    }

    /// The routes kept in the store, as the serving snapshot knows them.
    pub fn api_routes(&self) -> Vec<ApiRoute> {
        self.api_routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Compiles the config with `routes` as the API routes; swaps it in only if it compiles.
    /// The caller persists the change to the store between [`Relay::check_api_routes`] and this.
    pub fn apply_api_routes(&self, routes: Vec<ApiRoute>) -> Result<ReloadOutcome, ConfigErrors> {
        let loaded = config::load_with_api_routes(&self.config_path, &ProcessEnv, &routes);
        if loaded.is_ok() {
            *self.api_routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = routes;
        }
        self.install(loaded)
    }

    /// Whether the config compiles with `routes` as the API routes, without swapping.
    pub fn check_api_routes(&self, routes: &[ApiRoute]) -> Result<(), ConfigErrors> {
        config::load_with_api_routes(&self.config_path, &ProcessEnv, routes).map(|_| ())
    }

    fn install(&self, loaded: Result<Snapshot, ConfigErrors>) -> Result<ReloadOutcome, ConfigErrors> {
        let current = self.snapshot();
        let mut status = self.lock_status();
        match loaded {
            Ok(snapshot) if snapshot.content_hash == current.content_hash => {
                status.last_error = None;
                status.last_error_at = None;
                ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => "unchanged").increment(1);
                Ok(ReloadOutcome::Unchanged { generation: status.generation })
            }
            Ok(snapshot) => {
                status.restart_required = restart_required(&self.started_with, &snapshot.settings);
                status.restart_required.extend(self.tighten_admin_token(&snapshot.settings));
                for note in &status.restart_required {
                    tracing::warn!(note = %note, "config change needs a restart");
                }
                self.config.store(Arc::new(snapshot));
                status.generation += 1;
                status.loaded_at = Utc::now();
                status.last_error = None;
                status.last_error_at = None;
                ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => "ok").increment(1);
                ::metrics::gauge!(metrics::CONFIG_GENERATION).set(status.generation as f64);
                tracing::info!(generation = status.generation, "config reloaded");
                Ok(ReloadOutcome::Reloaded { generation: status.generation })
            }
            Err(errors) => {
                for error in &errors.0 {
                    tracing::error!(error = %error, "config reload failed; the previous config keeps serving");
                }
                status.last_error = Some(errors.to_string());
                status.last_error_at = Some(Utc::now());
                ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => "error").increment(1);
                Err(errors)
            }
        }
    }
}

/// Settings read once at startup: a reload cannot apply them to a running listener or client.
#[derive(Debug, Clone, PartialEq)]
struct StartupSettings {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    header_timeout: std::time::Duration,
    queue_capacity: usize,
    max_buffered_bytes: u64,
    ca_file_roots: usize,
    tls: bool,
    admin_client_ca: usize,
}

impl StartupSettings {
    fn of(settings: &config::Settings) -> StartupSettings {
        StartupSettings {
            listen: settings.listen,
            admin_listen: settings.admin.as_ref().map(|a| a.listen),
            header_timeout: settings.limits.header_timeout,
            queue_capacity: settings.limits.queue_capacity,
            max_buffered_bytes: settings.limits.max_buffered_bytes,
            ca_file_roots: settings.extra_roots.len(),
            tls: settings.tls.is_some(),
            admin_client_ca: settings.tls.as_ref().map_or(0, |tls| tls.client_ca.len()),
        }
    }
}

fn restart_required(started: &StartupSettings, new: &config::Settings) -> Vec<String> {
    let new = StartupSettings::of(new);
    let mut notes = Vec::new();
    if new.listen != started.listen {
        notes.push(format!("listen changed from {} to {}: restart to apply", started.listen, new.listen));
    }
    if new.admin_listen != started.admin_listen {
        notes.push(format!("admin.listen changed from {:?} to {:?}: restart to apply", started.admin_listen, new.admin_listen));
    }
    if new.header_timeout != started.header_timeout {
        notes.push("limits.header_timeout changed: restart to apply".to_string());
    }
    if new.queue_capacity != started.queue_capacity {
        notes.push("limits.queue_capacity changed: restart to apply".to_string());
    }
    if new.max_buffered_bytes != started.max_buffered_bytes {
        notes.push("limits.max_buffered_bytes changed: restart to apply".to_string());
    }
    if new.tls != started.tls {
        notes.push("tls turned on or off: restart to apply (a renewed certificate needs no restart)".to_string());
    }
    if new.admin_client_ca != started.admin_client_ca {
        notes.push("tls.client_ca changed: the admin listener keeps the certificates it started with until a restart".to_string());
    }
    if new.ca_file_roots != started.ca_file_roots {
        notes.push("outbound.ca_file changed: restart to apply".to_string());
    }
    notes
}

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
}

async fn open_store(path: &Path) -> Result<Arc<dyn Store>, StoreError> {
    let path = path.to_path_buf();
    let opened =
        tokio::task::spawn_blocking(move || SqliteStore::open(&path)).await.map_err(|join| StoreError::Corrupt(join.to_string()))??;
    Ok(Arc::new(opened))
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

/// Checks every few seconds that the store file is still the one opened (readiness checks
/// it on every probe too).
async fn watch_store_file(relay: Arc<Relay>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if relay.store_owner.check().is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A started relay: its bound addresses, and the handle that stops it.
pub struct Running {
    pub ingress_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub relay: Arc<Relay>,
    shutdown: watch::Sender<bool>,
    ingress: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Signals every task to stop, without waiting.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Graceful stop: no new connections, in-flight requests finish, deliveries on the wire
    /// finish or are handed back, the store is flushed — all within `limits.shutdown_grace`.
    pub async fn shutdown(self) {
        let grace = self.relay.snapshot().settings.limits.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        self.stop();
        let _ = tokio::time::timeout_at(deadline, self.ingress).await;
        self.relay.engine.drain(deadline).await;
        if let Err(err) = self.relay.engine.store().close().await {
            tracing::warn!(error = %err, "closing the store");
        }
        self.relay.store_owner.release();
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
    let snapshot = config::load(&path, &ProcessEnv)?;
    start_with(&path, snapshot, options).await
}

pub async fn start_with(path: &Path, snapshot: Snapshot, options: &StartOptions) -> Result<Running, StartError> {
    metrics::handle();
    let outbound = Outbound::build(&snapshot.settings.extra_roots)?;
    let outbound_limits = Arc::new(OutboundLimiters::default());
    let listen = snapshot.settings.listen;
    let admin_listen = snapshot.settings.admin.as_ref().map(|a| a.listen);
    let ingress_listener = TcpListener::bind(listen).await.map_err(|source| StartError::Bind { what: "listen", addr: listen, source })?;
    let admin_listener = match admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what: "admin.listen", addr, source })?),
        None => None,
    };
    let ingress_addr = ingress_listener.local_addr().map_err(|source| StartError::Bind { what: "listen", addr: listen, source })?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let started_with = StartupSettings::of(&snapshot.settings);
    let admin_token = snapshot.settings.admin.as_ref().and_then(|a| a.token.as_deref()).map(Arc::from);
    let buffered_kib = usize::try_from(snapshot.settings.limits.max_buffered_bytes.div_ceil(1024))
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    connections::raise_descriptor_limit(snapshot.settings.limits.max_connections);
    let mut store_owner = StoreOwnership::claim(&snapshot.settings.store_path)?;
    let store = open_store(&snapshot.settings.store_path).await?;
    store_owner.opened();
    let api_routes: Vec<ApiRoute> =
        store.list_routes().await?.into_iter().map(|stored| ApiRoute { name: stored.name, definition: stored.definition }).collect();
    let mut startup_error = None;
    let snapshot = if api_routes.is_empty() {
        snapshot
    } else {
        match config::load_with_api_routes(path, &ProcessEnv, &api_routes) {
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
    let engine = Engine::start(store.clone(), config.clone(), outbound.clone(), outbound_limits.clone(), 64, receiver.clone()).await?;
    tokio::spawn(prune_periodically(store, retention, receiver.clone()));
    let relay = Arc::new(Relay {
        started_with,
        config,
        config_path: path.to_path_buf(),
        outbound,
        engine,
        outbound_limits,
        ingress_limits: IngressLimiters::default(),
        status: Mutex::new(ConfigStatus {
            generation: 1,
            loaded_at: Utc::now(),
            last_error_at: startup_error.as_ref().map(|_| Utc::now()),
            last_error: startup_error,
            restart_required: Vec::new(),
        }),
        api_routes: Mutex::new(api_routes),
        api_lock: tokio::sync::Mutex::new(()),
        store_owner,
        admin_token: Mutex::new(admin_token),
        sync_log_slots: Arc::new(tokio::sync::Semaphore::new(256)),
        buffered_kib: Arc::new(tokio::sync::Semaphore::new(buffered_kib)),
    });
    tokio::spawn(watch_store_file(relay.clone(), receiver.clone()));
    ::metrics::gauge!(metrics::CONFIG_GENERATION).set(1.0);
    ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => "ok").increment(0);
    let acceptor = match relay.snapshot().settings.tls.is_some() {
        true => Some(crate::tls::acceptor(relay.config.clone()).map_err(StartError::Tls)?),
        false => None,
    };
    let ingress = tokio::spawn(connections::serve(ingress_listener, relay.clone(), acceptor, receiver.clone()));
    if let Some(listener) = admin_listener {
        let admin_tls = match relay.snapshot().settings.tls.as_ref().filter(|tls| !tls.client_ca.is_empty()) {
            Some(tls) => Some(crate::tls::admin_acceptor(relay.config.clone(), &tls.client_ca).map_err(StartError::Tls)?),
            None => None,
        };
        tokio::spawn(admin::serve(listener, relay.clone(), admin_tls, receiver.clone()));
    }
    if let Err(err) = reload::spawn(relay.clone(), receiver, options.watch_files) {
        tracing::warn!(error = %err, "file watching unavailable; reload with SIGHUP or POST /api/reload");
    }
    tracing::info!(%ingress_addr, admin = ?admin_addr, "hookrelay listening");
    Ok(Running { ingress_addr, admin_addr, relay, shutdown, ingress })
}
