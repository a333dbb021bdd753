//! The `hookrelay` command line: parses arguments and calls into the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use hookrelay::config::env::ProcessEnv;
use hookrelay::snapshot;

#[derive(Parser)]
#[command(name = "hookrelay", version, about = "Sidecar reverse-proxy webhook relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve webhooks with the given config.
    Run {
        #[arg(short, long, default_value = "hookrelay.yaml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Do not watch the config files; reload only on SIGHUP or `POST /api/reload`.
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a config; print every error with file:line:col; exit 1 on error.
    Check {
        #[arg(short, long, default_value = "hookrelay.yaml")]
        config: PathBuf,
    },
    /// Run config-as-code cases: each request goes through matching and rendering (nothing
    /// is sent) and must produce the expected requests; prints a diff per mismatch.
    Test {
        /// Overrides each cases file's own `config:`.
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[arg(required = true)]
        cases: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
    /// Exit 0 when the admin listener's `/readyz` answers 200 within 3 seconds, else 1: a
    /// health check for containers that needs no shell tools.
    Probe {
        /// The admin listener. Default: `http://` + `HOOKRELAY_ADMIN_LISTEN` when that is set
        /// (as the container image's config reads it; `0.0.0.0` is asked on 127.0.0.1), else
        /// http://127.0.0.1:9090 (the example config's).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Show which routes a request matches and the exact requests they would send. Nothing is sent.
    Render {
        #[arg(short, long, default_value = "hookrelay.yaml")]
        config: PathBuf,
        /// Render only this route, whether or not it matches.
        #[arg(long)]
        route: Option<String>,
        /// File holding the request body.
        #[arg(long)]
        body: Option<PathBuf>,
        /// A request header, `Name: value`; repeat for more.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Request path (default: the route's own when --route names a literal path, else /).
        #[arg(long)]
        path: Option<String>,
        #[arg(long, default_value = "POST")]
        method: String,
        /// Show Authorization and signature headers instead of `[redacted]`.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Compare, offline, what a config would send for stored events with what was sent the
    /// first time. Nothing is sent or written. Run it in CI before deploying a config change.
    Replay {
        /// The new config (its `store` is read unless --store is given).
        #[arg(short, long, default_value = "hookrelay.yaml")]
        config: PathBuf,
        /// A SQLite file or a postgres:// URL to read the events from.
        #[arg(long)]
        store: Option<String>,
        /// Events received since: a duration ago (24h), RFC 3339, or ms since the epoch.
        #[arg(long)]
        since: Option<String>,
        /// Events received before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Events the named route took.
        #[arg(long, conflicts_with = "unmatched")]
        route: Option<String>,
        /// Only requests no route took, kept by `store.keep_unmatched`.
        #[arg(long)]
        unmatched: bool,
        /// Events whose name matches this glob (`*`, `?`).
        #[arg(long)]
        event: Option<String>,
        /// Events with a delivery in this status (pending, in_flight, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many events, newest first.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Replay through this route instead of the event's own; repeat for more, `*` for every route that matches.
        #[arg(long = "through")]
        through: Vec<String>,
        /// Print the comparisons as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Exit 1 when any event would be sent differently (or no longer matches its route).
        #[arg(long)]
        fail_on_change: bool,
    },
}

/// jemalloc instead of the C library's allocator: request buffers are allocated on the
/// runtime's threads and freed on the store's writer, where glibc's arenas spend a sixth of
/// a sync route's CPU consolidating and locking (see the README's Performance section).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start: one arena for all threads (one per core kept
/// about 3 MiB more resident with the connection threads, for no measurable CPU), and
/// freed pages handed back within a second by a thread of jemalloc's own, to keep the
/// resident size near glibc's (without it, pages freed by a connection thread that then
/// sits idle stay resident until that thread allocates again).
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: &[u8] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true\0";

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr from a thread of their own, gathered a few milliseconds at a
/// time, so a request never waits on the terminal or pipe; keep the guard until exit, when
/// it writes what is left. The writer also counts the lines dropped because stderr was not
/// keeping up.
fn init_logs(format: LogFormat) -> anyhow::Result<(hookrelay::logwriter::FlushGuard, hookrelay::logwriter::LogWriter)> {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The file watcher's own trace lines, written to a log in a watched folder, would
    // produce more events to trace: keep them quiet unless asked for by name.
    if !std::env::var("RUST_LOG").unwrap_or_default().contains("notify") {
        for quiet in ["notify=info", "inotify=info"] {
            if let Ok(directive) = quiet.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    // The template engine's debug lines print the render context: request headers and
    // bodies, credentials included. Only by name.
    if !std::env::var("RUST_LOG").unwrap_or_default().contains("handlebars") {
        if let Ok(directive) = "handlebars=info".parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Lossy: when stderr stops being read (a full pipe), the relay must go on serving
    // webhooks, health checks and shutdown; lines past 1 MiB waiting are dropped and
    // counted (`hookrelay_log_lines_dropped_total`) instead of stopping every thread that logs.
    let (writer, guard) = hookrelay::logwriter::LogWriter::start(std::io::stderr()).context("starting the log writer")?;
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer.clone()).with_ansi(ansi);
    let line_format = match format {
        LogFormat::Text => {
            builder.init();
            hookrelay::request_log::LineFormat::Text
        }
        LogFormat::Json => {
            builder.json().init();
            hookrelay::request_log::LineFormat::Json
        }
    };
    // The request line, the one written per request, skips tracing's formatter; coloured
    // lines (a terminal) are left to it.
    if !ansi {
        hookrelay::request_log::write_directly(writer.clone(), line_format);
    }
    Ok((guard, writer))
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}

fn try_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run { config, log_format, no_watch } => {
            let (guard, dropped_log_lines) = init_logs(log_format)?;
            let mut flush_logs_on_exit = Some(guard);
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let options = hookrelay::app::StartOptions { watch_files: !no_watch };
                // Starting may wait for a shared store's database; a stop request ends the wait.
                let running = tokio::select! {
                    running = hookrelay::app::start_with_options(&config, &options) => running?,
                    stop = shutdown_signal() => {
                        stop?;
                        tracing::info!("stopped before the relay was started");
                        return anyhow::Ok(());
                    }
                };
                tokio::spawn(hookrelay::metrics::count_dropped_log_lines(move || dropped_log_lines.dropped_lines()));
                shutdown_signal().await?;
                tracing::info!("shutting down: finishing in-flight requests (a second signal exits at once)");
                tokio::select! {
                    _ = running.shutdown() => {}
                    _ = shutdown_signal() => {
                        tracing::warn!("second signal: exiting now");
                        // `exit` runs no destructors: flush the log lines still queued.
                        drop(flush_logs_on_exit.take());
                        std::process::exit(1);
                    }
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match snapshot::load(&config, &ProcessEnv) {
            Ok(snapshot) => {
                for warning in &snapshot.warnings {
                    eprintln!("warning: {warning}");
                }
                if let Some(problem) = snapshot.settings.store.sqlite_path().and_then(hookrelay::store::ownership::unwritable) {
                    eprintln!("warning: {problem}");
                }
                let targets: usize = snapshot.routes.iter().map(|r| r.targets.len()).sum();
                println!(
                    "{}: ok ({} routes, {} targets, {} files)",
                    config.display(),
                    snapshot.routes.len(),
                    targets,
                    snapshot.files.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprint!("{errors}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&hookrelay::config::schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { config, cases } => match hookrelay::cases::run(&cases, config.as_deref()) {
            Ok(results) => {
                let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
                for result in &results {
                    if result.failures.is_empty() {
                        println!("ok   {}: {}", result.file.display(), result.name);
                    } else {
                        println!("FAIL {}: {}", result.file.display(), result.name);
                        for failure in &result.failures {
                            println!("  {failure}");
                        }
                    }
                }
                println!("{} passed, {} failed", results.len() - failed, failed);
                Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            Err(err) => {
                eprintln!("{err}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Probe { admin } => {
            let admin = admin.unwrap_or_else(|| match std::env::var("HOOKRELAY_ADMIN_LISTEN") {
                Ok(listen) if !listen.trim().is_empty() => {
                    format!("http://{}", listen.trim().replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]"))
                }
                _ => "http://127.0.0.1:9090".to_string(),
            });
            let url = format!("{}/readyz", admin.trim_end_matches('/'));
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let answered = runtime.block_on(async {
                let client = hookrelay::delivery::client::Outbound::build(&[]).context("building the HTTP client")?;
                let request =
                    http::Request::get(&url).body(hookrelay::delivery::client::full(bytes::Bytes::new())).context("the --admin URL")?;
                match tokio::time::timeout(std::time::Duration::from_secs(3), client.trusted.request(request)).await {
                    Ok(Ok(response)) => anyhow::Ok(Ok(response.status())),
                    Ok(Err(err)) => anyhow::Ok(Err(hookrelay::delivery::client::error_chain(&err))),
                    Err(_) => anyhow::Ok(Err("no answer within 3s".to_string())),
                }
            })?;
            match answered {
                Ok(status) if status == http::StatusCode::OK => {
                    println!("ready: {url} answered 200");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(status) => {
                    eprintln!("not ready: {url} answered {status}");
                    Ok(ExitCode::FAILURE)
                }
                Err(reason) => {
                    eprintln!("not ready: {url}: {reason}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Replay { config, store, since, until, route, unmatched, event, status, limit, through, json, fail_on_change } => {
            let snapshot = match snapshot::load(&config, &ProcessEnv) {
                Ok(snapshot) => snapshot,
                Err(errors) => {
                    eprint!("{errors}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let now = chrono::Utc::now().timestamp_millis();
            let time = |flag: &str, value: Option<String>| {
                value
                    .map(|text| hookrelay::values::instant_ms(&serde_json::Value::String(text), now))
                    .transpose()
                    .map_err(|err| anyhow::anyhow!("{flag}: {err}"))
            };
            let filter = hookrelay::store::EventFilter {
                route: if unmatched { Some(hookrelay::store::UNMATCHED_ROUTE.to_string()) } else { route },
                event,
                since: time("--since", since)?,
                until: time("--until", until)?,
                status: status.as_deref().map(str::parse).transpose().context("--status")?,
                ..Default::default()
            };
            let choice = hookrelay::replay::RouteChoice::from_list((!through.is_empty()).then_some(through));
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let compared = runtime.block_on(async {
                use hookrelay::replay::offline::{compare_stored, StoredEvents};
                let events = StoredEvents::open(store.as_deref(), &snapshot.settings.store).await?;
                anyhow::Ok(compare_stored(&snapshot, &events, filter, limit, &choice).await?)
            })?;
            let changed = compared.iter().filter(|c| c.changed).count();
            if json {
                println!("{}", serde_json::to_string_pretty(&compared)?);
            } else {
                for comparison in &compared {
                    print!("{}", hookrelay::replay::offline::describe(comparison));
                }
                println!("{} events: {changed} would change, {} unchanged", compared.len(), compared.len() - changed);
            }
            Ok(if fail_on_change && changed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Render { config, route, body, headers, path, method, show_secrets } => {
            let snapshot = match snapshot::load(&config, &ProcessEnv) {
                Ok(snapshot) => snapshot,
                Err(errors) => {
                    eprint!("{errors}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let raw = match &body {
                Some(file) => std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
                None => Vec::new(),
            };
            let mut header_map = http::HeaderMap::new();
            for line in &headers {
                let (name, value) = line.split_once(':').with_context(|| format!("header {line:?} is not `Name: value`"))?;
                let name = http::HeaderName::from_bytes(name.trim().as_bytes()).with_context(|| format!("bad header name in {line:?}"))?;
                header_map.append(name, value.trim().parse().with_context(|| format!("bad header value in {line:?}"))?);
            }
            if !header_map.contains_key(http::header::CONTENT_TYPE) && !raw.is_empty() {
                header_map.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            }
            let route_path = route
                .as_deref()
                .and_then(|name| snapshot.route(name))
                .map(|r| r.path.as_str().to_string())
                .filter(|p| !p.contains(['{', '*']));
            let path = path.or(route_path).unwrap_or_else(|| "/".to_string());
            let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).context("bad --method")?;
            let request =
                hookrelay::inbound::InboundRequest::new(method, &path, header_map, raw.into(), std::net::IpAddr::from([127, 0, 0, 1]));
            let report = hookrelay::render::dry_run(&snapshot, &request, route.as_deref(), show_secrets).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
