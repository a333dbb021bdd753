//! The running relay: shared state (config snapshot, client, queue, status) and startup
//! of the ingress and admin listeners. `main` and the tests both start it through here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, env::ProcessEnv, ConfigErrors, Snapshot};
use crate::delivery::client::{self, HttpClient};
use crate::delivery::queue::Queue;
use crate::ratelimit::{IngressLimiters, OutboundLimiters};
use crate::{admin, ingress, metrics};

/// What `GET /api/status` reports about the config.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigStatus {
    pub generation: u64,
    pub loaded_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

pub struct Relay {
    config: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    pub client: HttpClient,
    pub queue: Queue,
    /// Rate-limit buckets outlive config snapshots: a reload keeps unchanged ones.
    pub outbound_limits: Arc<OutboundLimiters>,
    pub ingress_limits: IngressLimiters,
    status: Mutex<ConfigStatus>,
}

impl Relay {
    /// The current snapshot; a request loads it once and uses it throughout.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load_full()
    }

    pub fn status(&self) -> ConfigStatus {
        match self.status.lock() {
            Ok(status) => status.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Client(#[from] client::ClientError),
}

/// A started relay: its bound addresses, and the handle that stops it.
pub struct Running {
    pub ingress_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub relay: Arc<Relay>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Loads the config at `path` and starts serving on its listeners.
pub async fn start(path: &Path) -> Result<Running, StartError> {
    let snapshot = config::load(path, &ProcessEnv)?;
    start_with(path, snapshot).await
}

pub async fn start_with(path: &Path, snapshot: Snapshot) -> Result<Running, StartError> {
    metrics::handle();
    let client = client::build(&snapshot.settings.extra_roots)?;
    let outbound_limits = Arc::new(OutboundLimiters::default());
    let queue = Queue::start(client.clone(), outbound_limits.clone(), snapshot.settings.limits.queue_capacity, 64);
    let listen = snapshot.settings.listen;
    let admin_listen = snapshot.settings.admin.as_ref().map(|a| a.listen);
    let ingress_listener = TcpListener::bind(listen).await.map_err(|source| StartError::Bind { what: "listen", addr: listen, source })?;
    let admin_listener = match admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what: "admin.listen", addr, source })?),
        None => None,
    };
    let ingress_addr = ingress_listener.local_addr().map_err(|source| StartError::Bind { what: "listen", addr: listen, source })?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let relay = Arc::new(Relay {
        config: ArcSwap::from_pointee(snapshot),
        config_path: path.to_path_buf(),
        client,
        queue,
        outbound_limits,
        ingress_limits: IngressLimiters::default(),
        status: Mutex::new(ConfigStatus { generation: 1, loaded_at: Utc::now(), last_error: None }),
    });
    ::metrics::gauge!(metrics::CONFIG_GENERATION).set(1.0);
    ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => "ok").increment(0);
    let (shutdown, receiver) = watch::channel(false);
    tokio::spawn(ingress::serve(ingress_listener, relay.clone(), receiver.clone()));
    if let Some(listener) = admin_listener {
        tokio::spawn(admin::serve(listener, relay.clone(), receiver));
    }
    tracing::info!(%ingress_addr, admin = ?admin_addr, "hookrelay listening");
    Ok(Running { ingress_addr, admin_addr, relay, shutdown })
}
