//! What triggers a reload: changes in the folders of the config and its includes (watched
//! as folders, so rename-based saves, atomic `mv` and ConfigMap `..data` symlink swaps are
//! all seen; bursts debounced), and SIGHUP. The reload itself is [`Relay::reload`].

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::ConfigErrors;
use crate::relay::{Relay, ReloadOutcome};
use crate::settings::StoreLocation;
use crate::snapshot::Snapshot;

/// Quiet time after the last change to a config file before reloading: editors and
/// `kubectl` write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// However often a config file keeps changing, past this long after the first change of a
/// burst the reload waits only for [`SHORT_QUIET`].
const DEBOUNCE_CEILING: Duration = Duration::from_millis(750);
/// Past the ceiling: enough for a writer to finish a file it writes in several steps.
const SHORT_QUIET: Duration = Duration::from_millis(100);

/// Reloads on a blocking thread (config loading reads files).
pub async fn reload_now(relay: &Arc<Relay>) -> Result<ReloadOutcome, ConfigErrors> {
    let relay = relay.clone();
    match tokio::task::spawn_blocking(move || relay.reload()).await {
        Ok(outcome) => outcome,
        Err(join) => Err(ConfigErrors(vec![crate::config::ConfigError {
            file: PathBuf::new(),
            position: None,
            path: String::new(),
            message: format!("reload task failed: {join}"),
        }])),
    }
}

/// Starts the SIGHUP handler and, with `watch_files`, the watcher; both stop when
/// `shutdown` turns true.
pub fn spawn(relay: Arc<Relay>, shutdown: watch::Receiver<bool>, watch_files: bool) -> Result<(), notify::Error> {
    let (events, receiver) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = if watch_files {
        Some(notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Some(event) = event.ok().filter(|event| changes_content(&event.kind)) {
                for path in event.paths {
                    let _ = events.send(path);
                }
            }
        })?)
    } else {
        None
    };
    let mut watcher = watcher;
    // Watch before returning, so a change made right after startup is not missed.
    let mut watched = HashSet::new();
    sync_watches(&mut watcher, &mut watched, &relay.snapshot());
    tokio::spawn(run(relay, watcher, watched, receiver, shutdown));
    Ok(())
}

async fn run(
    relay: Arc<Relay>,
    mut watcher: Option<RecommendedWatcher>,
    mut watched: HashSet<PathBuf>,
    mut events: mpsc::UnboundedReceiver<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hangups = hangup_signals();
    loop {
        tokio::select! {
            // Without a watcher the channel is closed and this branch is disabled.
            Some(path) = events.recv() => {
                if !is_config_change(&relay.snapshot(), &path) {
                    continue;
                }
                settle(&relay, &mut events).await;
                let _ = reload_now(&relay).await;
            }
            Some(()) = next_hangup(&mut hangups) => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = reload_now(&relay).await;
            }
            _ = shutdown.changed() => return,
        }
        // A folder watched only from now on may already hold a file its include glob
        // matches (written between the reload and the watch): look once, so it is not
        // missed until some later change.
        if sync_watches(&mut watcher, &mut watched, &relay.snapshot()) && includes_changed(&relay.snapshot()) {
            let _ = reload_now(&relay).await;
            sync_watches(&mut watcher, &mut watched, &relay.snapshot());
        }
    }
}

/// Whether the include globs now match other files than the snapshot was built from.
fn includes_changed(snapshot: &Snapshot) -> bool {
    snapshot.include_patterns.iter().any(|pattern| {
        glob::glob(&pattern.to_string_lossy())
            .is_ok_and(|mut paths| paths.any(|found| found.is_ok_and(|found| !snapshot.files.contains(&found))))
    })
}

/// Waits until config files have been quiet for [`DEBOUNCE`] (only [`SHORT_QUIET`] once
/// [`DEBOUNCE_CEILING`] has passed since the first change); events on other files in the
/// folders (logs, the store) are ignored, so a busy folder cannot hold a reload back.
/// A reload never starts in the middle of a write: a file written in two steps must not
/// be read as the half it is after the first.
async fn settle(relay: &Relay, events: &mut mpsc::UnboundedReceiver<PathBuf>) {
    let ceiling = tokio::time::Instant::now() + DEBOUNCE_CEILING;
    let mut last_change = tokio::time::Instant::now();
    loop {
        let quiet = if last_change >= ceiling { SHORT_QUIET } else { DEBOUNCE };
        let until = (last_change + quiet).min(ceiling.max(last_change + SHORT_QUIET));
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Some(path)) if is_config_change(&relay.snapshot(), &path) => last_change = tokio::time::Instant::now(),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// File events that can change what a config file holds. Reads (`Access`, which the
/// relay's own reloads cause) and metadata changes are not changes.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::ModifyKind;
    use notify::EventKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|err| tracing::warn!(error = %err, "SIGHUP reload unavailable"))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangups {
        return signal.recv().await;
    }
    let _ = hangups;
    std::future::pending().await
}

/// Watches the folders that hold the config files and the include globs' fixed prefixes.
/// Returns whether a folder was added.
fn sync_watches(watcher: &mut Option<RecommendedWatcher>, watched: &mut HashSet<PathBuf>, snapshot: &Snapshot) -> bool {
    let Some(watcher) = watcher else { return false };
    let mut added = false;
    let mut wanted: HashSet<PathBuf> = snapshot.files.iter().filter_map(|file| file.parent().map(Path::to_path_buf)).collect();
    wanted.extend(snapshot.include_patterns.iter().map(|pattern| fixed_prefix(pattern)));
    for dir in wanted.difference(&watched.clone()) {
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir.clone());
                added = true;
            }
            Err(err) => tracing::warn!(dir = %dir.display(), error = %err, "cannot watch config folder"),
        }
    }
    for dir in watched.difference(&wanted).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&dir);
        watched.remove(&dir);
    }
    if added {
        warn_if_the_store_is_watched(snapshot, watched);
    }
    added
}

/// The kernel reports every write in a watched folder, so a store kept in one wakes the
/// watcher at each commit (a few percent of the relay's CPU under load): say so.
fn warn_if_the_store_is_watched(snapshot: &Snapshot, watched: &HashSet<PathBuf>) {
    let StoreLocation::Sqlite(path) = &snapshot.settings.store else { return };
    let Some(folder) = path.parent().and_then(|dir| std::fs::canonicalize(dir).ok()) else { return };
    if watched.iter().any(|dir| std::fs::canonicalize(dir).is_ok_and(|dir| dir == folder)) {
        tracing::warn!(
            store = %path.display(),
            "the store is in a folder watched for config changes, so each of its writes wakes the watcher; \
             keep it in a folder of its own (the default is data/ beside the config)"
        );
    }
}

/// The folder part of a glob before its first wildcard: `/etc/hr/routes/*.yaml` → `/etc/hr/routes`.
fn fixed_prefix(pattern: &Path) -> PathBuf {
    let mut prefix = PathBuf::new();
    for component in pattern.components() {
        if let Component::Normal(part) = component {
            if part.to_string_lossy().contains(['*', '?', '[', '{']) {
                return prefix;
            }
        }
        prefix.push(component);
    }
    prefix.parent().map(Path::to_path_buf).unwrap_or(prefix)
}

/// Events in a watched folder that may change the config: a config file by name (editors
/// replace it by rename, so inode-based matching would miss it), a file an include glob
/// matches, or a Kubernetes `..data`-style entry.
fn is_config_change(snapshot: &Snapshot, path: &Path) -> bool {
    let Some(name) = path.file_name() else { return false };
    if name.to_string_lossy().starts_with("..") {
        return true;
    }
    snapshot.files.iter().any(|file| file == path || file.file_name() == Some(name))
        || snapshot
            .include_patterns
            .iter()
            .any(|pattern| glob::Pattern::new(&pattern.to_string_lossy()).is_ok_and(|glob| glob.matches_path(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_prefixes() {
        assert_eq!(fixed_prefix(Path::new("/etc/hr/routes/*.yaml")), PathBuf::from("/etc/hr/routes"));
        assert_eq!(fixed_prefix(Path::new("/etc/hr/r*/x.yaml")), PathBuf::from("/etc/hr"));
        assert_eq!(fixed_prefix(Path::new("/etc/hr/extra.yaml")), PathBuf::from("/etc/hr"));
    }
}
