//! The running relay's shared state: the serving config snapshot and its status, the
//! outbound client, the delivery engine and store, rate-limit registries, and the admin
//! token in force. The listeners depend on it; starting them is [`crate::app`]'s job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use crate::config::{env::ProcessEnv, ApiRoute, ConfigErrors};
use crate::delivery::client::Outbound;
use crate::engine::Engine;
use crate::metrics;
use crate::ratelimit::{IngressLimiters, OutboundLimiters};
use crate::settings::Settings;
use crate::snapshot::{self, Snapshot};
use crate::store::ownership::StoreOwnership;
use crate::sync_log::SyncLog;

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
    /// Sync deliveries, logged after their answer.
    pub sync_log: SyncLog,
    /// Requests no route took, kept when `store.keep_unmatched` asks.
    pub unmatched: crate::unmatched::Keeper,
    /// `limits.max_buffered_bytes`, in KiB: request bodies held in memory at once.
    buffered_kib: Arc<tokio::sync::Semaphore>,
    /// Serialises route changes made through the API (check, persist, swap).
    pub api_lock: tokio::sync::Mutex<()>,
    /// This relay's claim on its SQLite file, and whether the file is still the one
    /// opened; None for a store shared through a database server.
    pub store_owner: Option<StoreOwnership>,
    /// The bearer token the admin listener requires. A reload may set or change it, never
    /// remove it: the listener stays bound where it was, so only a restart may loosen it.
    admin_token: Mutex<Option<Arc<str>>>,
}

/// What a relay is built from (see [`crate::app::start_with`]).
pub struct RelayParts {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub config_path: PathBuf,
    pub outbound: Outbound,
    pub engine: Arc<Engine>,
    pub outbound_limits: Arc<OutboundLimiters>,
    pub store_owner: Option<StoreOwnership>,
    pub api_routes: Vec<ApiRoute>,
    /// Why the API routes kept in the store could not be served, if they could not.
    pub startup_error: Option<String>,
}

impl Relay {
    pub fn new(parts: RelayParts) -> Relay {
        let snapshot = parts.config.load_full();
        let settings = &snapshot.settings;
        let buffered_kib = usize::try_from(settings.limits.max_buffered_bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Relay {
            started_with: StartupSettings::of(settings),
            admin_token: Mutex::new(settings.admin.as_ref().and_then(|a| a.token.as_deref()).map(Arc::from)),
            buffered_kib: Arc::new(tokio::sync::Semaphore::new(buffered_kib)),
            config: parts.config,
            config_path: parts.config_path,
            outbound: parts.outbound,
            sync_log: SyncLog::start(parts.engine.clone()),
            engine: parts.engine,
            outbound_limits: parts.outbound_limits,
            ingress_limits: IngressLimiters::default(),
            status: Mutex::new(ConfigStatus {
                generation: 1,
                loaded_at: Utc::now(),
                last_error_at: parts.startup_error.as_ref().map(|_| Utc::now()),
                last_error: parts.startup_error,
                restart_required: Vec::new(),
            }),
            api_routes: Mutex::new(parts.api_routes),
            api_lock: tokio::sync::Mutex::new(()),
            store_owner: parts.store_owner,
            unmatched: Default::default(),
        }
    }

    /// The serving config's certificate, read at each TLS handshake (so it follows reloads).
    pub fn current_certificate(&self) -> crate::tls::CurrentCertificate {
        let config = self.config.clone();
        Arc::new(move || config.load().settings.tls.as_ref().map(|tls| tls.certified.clone()))
    }

    /// The current snapshot; a request loads it once and uses it throughout.
    /// The store this relay opened, for people (a reload cannot move it).
    pub fn opened_store(&self) -> String {
        self.started_with.store.describe()
    }

    /// Why the store file can no longer be trusted, if it cannot (see [`StoreOwnership`]).
    pub fn store_problem(&self) -> Result<(), String> {
        self.store_owner.as_ref().map_or(Ok(()), StoreOwnership::check)
    }

    /// The last verdict of [`Relay::store_problem`], without touching the file system.
    pub fn store_lost(&self) -> bool {
        self.store_owner.as_ref().is_some_and(StoreOwnership::is_lost)
    }

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
    fn tighten_admin_token(&self, settings: &Settings) -> Option<String> {
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
        self.install(snapshot::load_with_api_routes(&self.config_path, &ProcessEnv, &api_routes))
    }

    /// The routes kept in the store, as the serving snapshot knows them.
    pub fn api_routes(&self) -> Vec<ApiRoute> {
        self.api_routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Compiles the config with `routes` as the API routes; swaps it in only if it compiles.
    /// The caller persists the change to the store between [`Relay::check_api_routes`] and this.
    pub fn apply_api_routes(&self, routes: Vec<ApiRoute>) -> Result<ReloadOutcome, ConfigErrors> {
        let loaded = snapshot::load_with_api_routes(&self.config_path, &ProcessEnv, &routes);
        if loaded.is_ok() {
            *self.api_routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = routes;
        }
        self.install(loaded)
    }

    /// Whether the config compiles with `routes` as the API routes, without swapping.
    pub fn check_api_routes(&self, routes: &[ApiRoute]) -> Result<(), ConfigErrors> {
        snapshot::load_with_api_routes(&self.config_path, &ProcessEnv, routes).map(|_| ())
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
                for warning in &snapshot.warnings {
                    tracing::warn!(warning = %warning, "config warning");
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
    /// The admin listener's client CA certificates (DER), compared whole.
    admin_client_ca: Vec<Vec<u8>>,
    store: crate::settings::StoreLocation,
    telemetry: Option<crate::telemetry::OtlpSettings>,
}

impl StartupSettings {
    fn of(settings: &Settings) -> StartupSettings {
        StartupSettings {
            listen: settings.listen,
            admin_listen: settings.admin.as_ref().map(|a| a.listen),
            header_timeout: settings.limits.header_timeout,
            queue_capacity: settings.limits.queue_capacity,
            max_buffered_bytes: settings.limits.max_buffered_bytes,
            ca_file_roots: settings.extra_roots.len(),
            tls: settings.tls.is_some(),
            admin_client_ca: settings.tls.as_ref().map_or_else(Vec::new, |tls| tls.client_ca.iter().map(|ca| ca.to_vec()).collect()),
            store: settings.store.clone(),
            telemetry: settings.telemetry.clone(),
        }
    }
}

fn restart_required(started: &StartupSettings, new: &Settings) -> Vec<String> {
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
    if new.telemetry != started.telemetry {
        notes.push("telemetry changed: restart to apply".to_string());
    }
    if new.admin_client_ca != started.admin_client_ca {
        notes.push("tls.client_ca changed: the admin listener keeps the certificates it started with until a restart".to_string());
    }
    if new.ca_file_roots != started.ca_file_roots {
        notes.push("outbound.ca_file changed: restart to apply".to_string());
    }
    if new.store != started.store {
        notes.push(format!(
            "store changed from {} to {}: the relay keeps the store it opened until a restart",
            started.store.describe(),
            new.store.describe()
        ));
    }
    notes
}
