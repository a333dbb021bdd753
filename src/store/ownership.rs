//! A SQLite store belongs to one running relay: an exclusive OS lock on a file beside the
//! database (holding the owner's pid), taken before the store is opened; and a check that
//! the database file is still the one that was opened (deleted or replaced under a running
//! relay, new events would land in an unlinked file and be lost at the next restart).
//! Offline commands never open the store, so they need no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("the store {path} is in use by another hookrelay{holder}; a SQLite store belongs to one relay (stop the other one first)")]
    Held { path: String, holder: String },
    #[error("cannot lock the store at {path}")]
    Io {
        path: String,
        #[source]
        error: std::io::Error,
    },
}

/// The lock on one store, held for as long as the relay runs.
pub struct StoreOwnership {
    /// Held until [`StoreOwnership::release`] (a graceful stop) or the process ends.
    lock: Mutex<Option<File>>,
    lock_path: PathBuf,
    database: PathBuf,
    /// The database file as opened: unlinked (deleted, or replaced by a rename) once its
    /// link count drops to zero, even if a new file reuses its inode number.
    opened: Option<File>,
    lost: AtomicBool,
    reason: Mutex<Option<String>>,
}

/// Whether the file opened is still linked at `path`.
fn still_linked(opened: &File, path: &Path) -> std::io::Result<bool> {
    let now = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mine = opened.metadata()?;
        Ok(mine.nlink() > 0 && (mine.dev(), mine.ino()) == (now.dev(), now.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = (opened, now);
        Ok(true)
    }
}

/// Why the relay could not create or write its store at `database`, if it could not (a
/// read-only ConfigMap mount, say). Tries to create a file in the nearest existing folder.
pub fn unwritable(database: &Path) -> Option<String> {
    let mut folder = database.parent().map(Path::to_path_buf).unwrap_or_default();
    while !folder.as_os_str().is_empty() && !folder.exists() {
        folder = folder.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    let folder = if folder.as_os_str().is_empty() { PathBuf::from(".") } else { folder };
    let probe = folder.join(format!(".hookrelay-write-check-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(err) => Some(format!(
            "store.path {}: cannot write in {} ({err}); the store must be on a writable volume (not the config mount)",
            database.display(),
            folder.display()
        )),
    }
}

/// `database` with symlinks and `..` resolved: the file itself if it exists, else its
/// folder (the file will be created there).
fn resolved(database: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(database) {
        return real;
    }
    let folder = database.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (std::fs::canonicalize(folder), database.file_name()) {
        (Ok(folder), Some(name)) => folder.join(name),
        _ => database.to_path_buf(),
    }
}

/// The lock file beside `database`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    database.with_file_name(name)
}

impl StoreOwnership {
    /// Takes the lock, or says who holds it.
    pub fn claim(database: &Path) -> Result<StoreOwnership, OwnershipError> {
        let io = |error| OwnershipError::Io { path: database.display().to_string(), error };
        if let Some(parent) = database.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // The lock sits beside the file SQLite really opens: a symlink (or a second path to
        // the same folder) must not give a second relay a lock of its own.
        let real = resolved(database);
        let mut lock = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(lock_path(&real)).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(OwnershipError::Held { path: database.display().to_string(), holder });
            }
            Err(TryLockError::Error(error)) => return Err(io(error)),
        }
        lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| write!(lock, "{}", std::process::id())).map_err(io)?;
        Ok(StoreOwnership {
            lock: Mutex::new(Some(lock)),
            lock_path: lock_path(&real),
            database: database.to_path_buf(),
            opened: None,
            lost: AtomicBool::new(false),
            reason: Mutex::new(None),
        })
    }

    /// Remembers which file was opened; call once the store is open.
    pub fn opened(&mut self) {
        self.opened = File::open(&self.database).ok();
    }

    /// Whether the database file is still the one opened. Once it is not, it stays lost
    /// (the relay must be restarted) and the reason is logged once.
    pub fn check(&self) -> Result<(), String> {
        if self.lost.load(Ordering::Acquire) {
            return Err(self.reason());
        }
        // With the lock file deleted, another relay could take a new lock on the same store.
        let lock_kept = match self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
            Some(lock) => still_linked(lock, &self.lock_path).unwrap_or(false),
            None => true,
        };
        if !lock_kept {
            return Err(self.lose(format!(
                "the lock file {} was removed while running: another relay may now use this store; restart the relay",
                self.lock_path.display()
            )));
        }
        let Some(opened) = &self.opened else { return Ok(()) };
        match still_linked(opened, &self.database) {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err(self.lose(format!("the store file {} was replaced while running; restart the relay", self.database.display())))
            }
            Err(err) => Err(self.lose(format!("the store file {} is gone ({err}); restart the relay", self.database.display()))),
        }
    }

    fn lose(&self, reason: String) -> String {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::error!(reason = %reason, "store lost: answering 503 until restarted");
            *self.reason.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason.clone());
        }
        reason
    }

    fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone().unwrap_or_else(|| "the store was lost".to_string())
    }

    /// Gives the store up (after it was closed), so another relay may take it.
    pub fn release(&self) {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    }

    /// The last check's verdict, without touching the file system (for the request path).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_at_a_time_and_a_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("state/relay.db");
        let mut first = StoreOwnership::claim(&database).unwrap();
        let refused = StoreOwnership::claim(&database).err().unwrap().to_string();
        assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
        std::fs::write(&database, b"").unwrap();
        first.opened();
        assert_eq!(first.check(), Ok(()));
        std::fs::remove_file(&database).unwrap();
        std::fs::write(&database, b"").unwrap();
        assert!(first.check().unwrap_err().contains("replaced"));
        let mut second = StoreOwnership::claim(&dir.path().join("other.db")).unwrap();
        second.opened();
        std::fs::remove_file(lock_path(&dir.path().join("other.db"))).unwrap();
        assert!(second.check().unwrap_err().contains("lock file"), "a removed lock file is noticed");
        assert!(first.is_lost());
        #[cfg(unix)]
        {
            let link = dir.path().join("link.db");
            std::os::unix::fs::symlink(&database, &link).unwrap();
            assert!(StoreOwnership::claim(&link).is_err(), "a symlink to a store in use is refused");
        }
        first.release();
        assert!(StoreOwnership::claim(&database).is_ok(), "the lock goes with its owner");
    }
}
