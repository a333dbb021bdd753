//! The one log line per request (target `hookrelay::request`, level `info`). `hookrelay run`
//! writes it straight into the log's buffer, byte for byte as tracing's text or JSON
//! formatter would, because going through that formatter was a tenth of a proxied request's
//! CPU; with colours (a terminal) or in a process that did not ask for that, it goes
//! through `tracing` like every other line.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::logwriter::LogWriter;

/// How `hookrelay run` formats its log (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    Text,
    Json,
}

struct Direct {
    writer: LogWriter,
    format: LineFormat,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// From now on request lines go straight to `writer` in `format`, uncoloured; the first
/// call wins. Call it only when the tracing subscriber writes to the same writer in the
/// same format without colours, so that the log reads as one.
pub fn write_directly(writer: LogWriter, format: LineFormat) {
    let _ = DIRECT.set(Direct { writer, format });
}

/// What the line says about one request.
pub struct RequestLine<'a> {
    /// The request id as sent (not always UTF-8: shown lossily).
    pub request_id: &'a [u8],
    pub trace_id: Option<u128>,
    pub peer: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    /// The routes that fired, comma-separated (empty for none).
    pub routes: &'a str,
    pub status: u16,
    pub duration: Duration,
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    /// The current second as text, `2026-12-03T15:10:03`, formatted once a second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl RequestLine<'_> {
    /// Logs the line, unless the log's filter leaves `hookrelay::request` at `info` out.
    pub fn log(&self) {
        if !wanted() {
            return;
        }
        let Some(direct) = DIRECT.get() else {
            self.through_tracing();
            return;
        };
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else { return };
            line.clear();
            match direct.format {
                LineFormat::Text => self.text(SystemTime::now(), &mut line),
                LineFormat::Json => self.json(SystemTime::now(), &mut line),
            }
            direct.writer.write_line(&line);
        });
    }

    fn through_tracing(&self) {
        tracing::info!(
            target: "hookrelay::request",
            request_id = %String::from_utf8_lossy(self.request_id),
            trace_id = %TraceIdText(self.trace_id),
            peer = %self.peer,
            method = %self.method,
            path = %self.path,
            routes = %self.routes,
            status = self.status,
            duration_ms = duration_ms(self.duration),
            "request"
        );
    }

    /// `2026-12-03T15:10:03.449112Z  INFO hookrelay::request: request request_id=… duration_ms=0.864`
    fn text(&self, now: SystemTime, out: &mut Vec<u8>) {
        timestamp(now, out);
        out.extend_from_slice(b"  INFO hookrelay::request: request request_id=");
        out.extend_from_slice(String::from_utf8_lossy(self.request_id).as_bytes());
        out.extend_from_slice(b" trace_id=");
        trace_id(self.trace_id, out);
        out.extend_from_slice(b" peer=");
        ip(self.peer, out);
        for (name, value) in [(&b" method="[..], self.method), (b" path=", self.path), (b" routes=", self.routes)] {
            out.extend_from_slice(name);
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b" status=");
        decimal(self.status, out);
        out.extend_from_slice(b" duration_ms=");
        float(duration_ms(self.duration), out);
        out.push(b'\n');
    }

    /// The line tracing's JSON formatter writes: `{"timestamp":…,"level":"INFO","fields":{…},"target":…}`.
    fn json(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(now, out);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"request_id\":");
        json_string(&String::from_utf8_lossy(self.request_id), out);
        out.extend_from_slice(b",\"trace_id\":\"");
        trace_id(self.trace_id, out);
        out.extend_from_slice(b"\",\"peer\":\"");
        ip(self.peer, out);
        out.push(b'"');
        for (name, value) in [(&b",\"method\":"[..], self.method), (b",\"path\":", self.path), (b",\"routes\":", self.routes)] {
            out.extend_from_slice(name);
            json_string(value, out);
        }
        out.extend_from_slice(b",\"status\":");
        decimal(self.status, out);
        out.extend_from_slice(b",\"duration_ms\":");
        float(duration_ms(self.duration), out);
        out.extend_from_slice(b"},\"target\":\"hookrelay::request\"}\n");
    }
}

/// Whether the log's filter takes the line, asked as the event itself would ask: an event
/// with these fields (a directive naming a field, `[{delivery}]=off`, decides by them).
fn wanted() -> bool {
    tracing::enabled!(
        kind: tracing::metadata::Kind::EVENT,
        target: "hookrelay::request",
        tracing::Level::INFO,
        { message, request_id, trace_id, peer, method, path, routes, status, duration_ms }
    )
}

/// Milliseconds to the microsecond: `0.864`, not `0.8644599999999999`.
fn duration_ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// The trace id as 32 hex digits, or nothing for a request without a trace.
struct TraceIdText(Option<u128>);

impl std::fmt::Display for TraceIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id:032x}"),
            None => Ok(()),
        }
    }
}

fn trace_id(id: Option<u128>, out: &mut Vec<u8>) {
    let mut digits = [0u8; 32];
    if let Some(id) = id {
        // 16 bytes always fit 32 hex digits.
        if hex::encode_to_slice(id.to_be_bytes(), &mut digits).is_ok() {
            out.extend_from_slice(&digits);
        }
    }
}

/// RFC 3339 in UTC with microseconds, as tracing's `SystemTime` timer writes it.
fn timestamp(now: SystemTime, out: &mut Vec<u8>) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != seconds {
            let text = i64::try_from(seconds)
                .ok()
                .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
                .map(|time| time.format("%Y-%m-%dT%H:%M:%S").to_string())
                .unwrap_or_default();
            *second = (seconds, text);
        }
        out.extend_from_slice(second.1.as_bytes());
    });
    let _ = write!(out, ".{:06}Z", since_epoch.subsec_micros());
}

fn decimal(value: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

// Writing into a `Vec` (here and below) cannot fail.
fn ip(peer: IpAddr, out: &mut Vec<u8>) {
    let _ = write!(out, "{peer}");
}

/// As tracing prints an `f64` field (its `Debug` form, also what JSON gets for these values).
fn float(value: f64, out: &mut Vec<u8>) {
    let _ = write!(out, "{value:?}");
}

fn json_string(value: &str, out: &mut Vec<u8>) {
    // Writing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines() -> Vec<RequestLine<'static>> {
        vec![
            RequestLine {
                request_id: b"01K8Y7972TH682PRNSJPBE4XTW",
                trace_id: Some(0x0af7651916cd43dd8448eb211c80319c),
                peer: "127.0.0.1".parse().unwrap(),
                method: "POST",
                path: "/hooks/codeup",
                routes: "codeup-push,copy",
                status: 202,
                duration: Duration::from_nanos(864_459),
            },
            RequestLine {
                request_id: b"say \"hi\" \xff\\",
                trace_id: None,
                peer: "::1".parse().unwrap(),
                method: "GET",
                path: "/x",
                routes: "",
                status: 404,
                duration: Duration::from_millis(2),
            },
            RequestLine {
                request_id: b"",
                trace_id: Some(7),
                peer: "10.200.0.255".parse().unwrap(),
                method: "PATCH",
                path: "/",
                routes: "r",
                status: 500,
                duration: Duration::from_secs(61),
            },
        ]
    }

    /// The line as tracing's own formatter writes it, through a subscriber set up as
    /// `hookrelay run` sets up its log.
    fn through_tracing(line: &RequestLine<'_>, json: bool) -> String {
        let captured = Captured::default();
        let writer = {
            let captured = captured.clone();
            move || captured.clone()
        };
        let builder = tracing_subscriber::fmt().with_writer(writer).with_ansi(false);
        let log = || line.log();
        if json {
            tracing::subscriber::with_default(builder.json().finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn direct(line: &RequestLine<'_>, format: LineFormat) -> String {
        let mut out = Vec::new();
        match format {
            LineFormat::Text => line.text(SystemTime::now(), &mut out),
            LineFormat::Json => line.json(SystemTime::now(), &mut out),
        }
        String::from_utf8(out).unwrap()
    }

    /// `2026-12-03T15:10:03.449112Z`, and within a few seconds of now.
    fn assert_recent_timestamp(text: &str) {
        let parsed = chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
        assert_eq!(text.len(), 27, "{text}");
        assert!(text.ends_with('Z'), "{text}");
        assert!((chrono::Utc::now() - parsed.with_timezone(&chrono::Utc)).num_seconds().abs() < 5, "{text}");
    }

    #[test]
    fn the_text_line_is_byte_for_byte_tracings_after_the_timestamp() {
        for line in lines() {
            let (ours, theirs) = (direct(&line, LineFormat::Text), through_tracing(&line, false));
            let (our_time, our_rest) = ours.split_at(27);
            let (_, their_rest) = theirs.split_at(27);
            assert_recent_timestamp(our_time);
            assert_eq!(our_rest, their_rest);
        }
    }

    #[test]
    fn the_json_line_is_tracings_after_the_timestamp() {
        for line in lines() {
            let (ours, theirs) = (direct(&line, LineFormat::Json), through_tracing(&line, true));
            assert!(ours.ends_with("}\n") && !ours[..ours.len() - 1].contains('\n'), "{ours}");
            let mut ours: serde_json::Value = serde_json::from_str(&ours).unwrap();
            let mut theirs: serde_json::Value = serde_json::from_str(&theirs).unwrap();
            assert_recent_timestamp(ours["timestamp"].as_str().unwrap());
            ours["timestamp"].take();
            theirs["timestamp"].take();
            assert_eq!(ours, theirs);
        }
        let first = direct(&lines()[0], LineFormat::Json);
        assert!(first.contains(r#""status":202,"duration_ms":0.864},"target":"hookrelay::request"}"#), "{first}");
    }

    /// Directives that name fields, or only a target, decide for the line exactly as they
    /// decide for tracing's own event.
    #[test]
    fn the_filter_decides_as_it_does_for_tracings_event() {
        let line = &lines()[0];
        for directives in [
            "info",
            "warn",
            "info,hookrelay::request=off",
            "off,hookrelay::request=info",
            "info,hookrelay[{delivery}]=off",
            "info,[{delivery}]=off",
            "warn,[{delivery}]=info",
            "info,hookrelay::request[{nosuch}]=off",
            "warn,hookrelay::request[{request_id}]=info",
            "info,[{status}]=off",
        ] {
            let captured = Captured::default();
            let writer = {
                let captured = captured.clone();
                move || captured.clone()
            };
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
                .with_writer(writer)
                .with_ansi(false)
                .finish();
            let decided = tracing::subscriber::with_default(subscriber, || {
                line.through_tracing();
                wanted()
            });
            let written = !captured.0.lock().unwrap().is_empty();
            assert_eq!(decided, written, "RUST_LOG={directives}");
        }
    }

    #[test]
    fn durations_read_in_milliseconds_to_the_microsecond() {
        assert_eq!(duration_ms(Duration::from_nanos(864_459)), 0.864);
        assert_eq!(duration_ms(Duration::from_nanos(864_500)), 0.865);
        assert_eq!(duration_ms(Duration::from_secs(2)), 2000.0);
        let mut out = Vec::new();
        float(duration_ms(Duration::from_micros(1)), &mut out);
        assert_eq!(out, b"0.001");
    }

    #[test]
    fn timestamps_carry_six_digits_of_microseconds() {
        let mut out = Vec::new();
        timestamp(UNIX_EPOCH + Duration::new(1_764_774_603, 4_009_000), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "2025-12-03T15:10:03.004009Z");
        let mut out = Vec::new();
        timestamp(UNIX_EPOCH + Duration::new(1_764_774_604, 999_999_999), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "2025-12-03T15:10:04.999999Z");
    }
}
