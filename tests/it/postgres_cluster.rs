//! A throwaway PostgreSQL cluster for the PostgreSQL test suite, started from the server
//! binaries Debian installs (`/usr/lib/postgresql/<version>/bin`, or `HOOKRELAY_PG_BIN`):
//! one cluster per test process, on a free loopback port, in a folder under the temporary
//! directory, run as an unprivileged user when the tests run as root (the server refuses
//! root). Each test gets a fresh database. The server dies with the test process.
//!
//! Without PostgreSQL the suite is skipped and says so on stderr, unless
//! `HOOKRELAY_REQUIRE_POSTGRES=1` (set by CI), which turns the skip into a failure.
//! Shared by the unit tests (`src/store`) and the integration tests.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Cluster {
    port: u16,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);
static SKIP_REPORTED: AtomicBool = AtomicBool::new(false);

fn required() -> bool {
    std::env::var("HOOKRELAY_REQUIRE_POSTGRES").is_ok_and(|value| !value.is_empty() && value != "0")
}

/// The URL of a new, empty database, or None when PostgreSQL is not installed here (the
/// caller then skips its test; the reason is printed once per test).
pub async fn fresh_database(test: &str) -> Option<String> {
    let cluster = match CLUSTER.get_or_init(start) {
        Ok(cluster) => cluster,
        Err(reason) if required() => panic!("the PostgreSQL suite is required (HOOKRELAY_REQUIRE_POSTGRES) but cannot run: {reason}"),
        Err(reason) => {
            report_skip(test, reason);
            return None;
        }
    };
    let name = format!("hr_{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
    let admin = format!("host=127.0.0.1 port={} user=hookrelay dbname=postgres", cluster.port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            let created = client.batch_execute(&format!("CREATE DATABASE {name}")).await;
            drop(client);
            let _ = driver.await;
            created
        };
        match attempt.await {
            Ok(()) => return Some(format!("postgres://hookrelay@127.0.0.1:{}/{name}?sslmode=disable", cluster.port)),
            // The server may still be starting.
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("cannot create a test database on the test cluster: {error}"),
        }
    }
}

/// Says once per test process, past the test harness's capture (so that it shows in a
/// passing run), that the suite was skipped and why.
fn report_skip(test: &str, reason: &str) {
    if !SKIP_REPORTED.swap(true, Ordering::Relaxed) {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** PostgreSQL suite SKIPPED ({test} and every other PostgreSQL test in this binary): {reason}; install Debian's postgresql package to run it ***\n"
        );
    }
}

/// The folder holding `initdb` and `postgres`.
fn server_binaries() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("HOOKRELAY_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no PostgreSQL server under /usr/lib/postgresql".to_string())?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| "no PostgreSQL server under /usr/lib/postgresql".to_string())
}

/// The user and group to run the server as: ourselves, or an unprivileged account when root.
fn server_account() -> Option<(libc::uid_t, libc::gid_t)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    for name in [c"postgres", c"nobody"] {
        // SAFETY: the name is a valid C string; the returned record is read at once, before
        // any other call that could overwrite it.
        let record = unsafe { libc::getpwnam(name.as_ptr()) };
        if !record.is_null() {
            // SAFETY: checked non-null above.
            return Some(unsafe { ((*record).pw_uid, (*record).pw_gid) });
        }
    }
    None
}

/// Runs the command as `account` (when given); with `die_with_parent`, the child gets
/// SIGKILL when the thread that started it ends.
fn as_account(command: &mut Command, account: Option<(libc::uid_t, libc::gid_t)>, die_with_parent: bool) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = account {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After the change of user, which would clear it.
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Removes the folders of clusters whose test process is gone.
fn remove_stale_folders(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.filter_map(|entry| entry.ok()) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix("hookrelay-test-pg-")).and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A cluster's files and how to run its server.
struct Server {
    bin: PathBuf,
    folder: PathBuf,
    account: Option<(libc::uid_t, libc::gid_t)>,
    port: u16,
}

impl Server {
    /// A new cluster in a new folder under the temporary directory named by `tag`.
    fn init(tag: &str) -> Result<Server, String> {
        let bin = server_binaries()?;
        let base = std::env::temp_dir();
        remove_stale_folders(&base);
        let folder = base.join(format!("hookrelay-test-pg-{}{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).map_err(|error| format!("{}: {error}", folder.display()))?;
        let account = server_account();
        if let Some((uid, gid)) = account {
            std::os::unix::fs::chown(&folder, Some(uid), Some(gid)).map_err(|error| format!("chown {}: {error}", folder.display()))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["-D"]).arg(folder.join("data")).args(["-U", "hookrelay", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        initdb.current_dir(&folder).stdout(Stdio::piped()).stderr(Stdio::piped());
        as_account(&mut initdb, account, false);
        let output = initdb.output().map_err(|error| format!("initdb: {error}"))?;
        if !output.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|listener| listener.local_addr()).map_err(|e| e.to_string())?.port();
        Ok(Server { bin, folder, account, port })
    }

    /// Starts the server and waits until it listens; returns its pid.
    fn launch(&self) -> Result<u32, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.folder.join("server.log"))
            .map_err(|error| format!("server.log: {error}"))?;
        let mut server = Command::new(self.bin.join("postgres"));
        server
            .arg("-D")
            .arg(self.folder.join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("unix_socket_directories={}", self.folder.display()))
            // A test cluster: speed over durability, room for several relays' pools.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300"])
            .current_dir(&self.folder)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        as_account(&mut server, self.account, true);
        // The server is tied to this thread, which lives as long as the process.
        let (started, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = server.spawn();
            let _ = started.send(child.as_ref().map(|child| child.id()).map_err(|error| format!("postgres: {error}")));
            loop {
                std::thread::park();
            }
        });
        let pid = outcome.recv().map_err(|error| error.to_string())??;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)), Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.folder.join("server.log")).unwrap_or_default();
                return Err(format!("the test cluster did not start listening on port {}: {log}", self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }
}

fn start() -> Result<Cluster, String> {
    let server = Server::init("")?;
    server.launch()?;
    Ok(Cluster { port: server.port })
}

/// A cluster of one test's own, which it may stop and start again (the shared one must
/// stay up for the others). Stopped and removed when dropped.
pub struct PrivateCluster {
    server: Server,
    pid: Option<u32>,
}

impl PrivateCluster {
    /// None (after saying so) where PostgreSQL is not installed, as [`fresh_database`].
    pub fn start(test: &str) -> Option<PrivateCluster> {
        let started = Server::init(&format!("-{test}")).and_then(|server| Ok((server.launch()?, server)));
        match started {
            Ok((pid, server)) => Some(PrivateCluster { server, pid: Some(pid) }),
            Err(reason) if required() => panic!("the PostgreSQL suite is required (HOOKRELAY_REQUIRE_POSTGRES) but cannot run: {reason}"),
            Err(reason) => {
                report_skip(test, &reason);
                None
            }
        }
    }

    /// The URL of the cluster's own `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://hookrelay@127.0.0.1:{}/postgres?sslmode=disable", self.server.port)
    }

    /// A fast shutdown (clients disconnected), waiting until the server is gone.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        // SAFETY: signalling a process of ours by pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.server.folder.join("data/postmaster.pid").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port and files.
    pub fn restart(&mut self) {
        self.pid = Some(self.server.launch().unwrap_or_else(|error| panic!("{error}")));
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.server.folder);
    }
}
