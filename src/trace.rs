//! W3C Trace Context (`traceparent`, `tracestate`): a trace a sender started is continued,
//! each request the relay sends carrying a span of its own in that trace; deliveries to
//! targets start one when the sender did not.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A received or started trace: its id and flags (the sender's span is not needed: every
/// request the relay sends is a new child span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    trace_id: u128,
    flags: u8,
    /// Received from the sender (its `tracestate` goes on with it), not started here.
    continued: bool,
}

/// A `tracestate` longer than this is not passed on (the specification lets a vendor drop
/// it); a receiver with a small header limit would refuse every delivery carrying it.
const MAX_TRACESTATE: usize = 512;

fn hex_field<const N: usize>(text: &str) -> Option<u128> {
    (text.len() == N && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

impl Trace {
    /// The trace in a `traceparent` value, when it is valid: version `00` exactly, or a
    /// later version read by its first four fields; `ff`, upper-case hex and all-zero ids
    /// are not valid.
    pub fn parse(value: &str) -> Option<Trace> {
        let mut fields = value.trim().split('-');
        let version = fields.next()?;
        let (trace_id, parent_id, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let version = hex_field::<2>(version)?;
        if version == 0xff || (version == 0 && fields.next().is_some()) {
            return None;
        }
        let trace_id = hex_field::<32>(trace_id).filter(|id| *id != 0)?;
        hex_field::<16>(parent_id).filter(|id| *id != 0)?;
        // Version 00 defines only the sampled flag: others are sent on as zero.
        let flags = u8::try_from(hex_field::<2>(flags)?).ok()? & 0x01;
        Some(Trace { trace_id, flags, continued: true })
    }

    /// The trace a request carries, if it carries exactly one valid `traceparent`.
    pub fn of(headers: &HeaderMap) -> Option<Trace> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Trace::parse(value.to_str().ok()?)
    }

    /// A new trace, sampled.
    pub fn start() -> Trace {
        Trace { trace_id: fastrand::u128(1..), flags: 0x01, continued: false }
    }

    pub fn id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` of a new span of this trace.
    pub fn child(&self) -> HeaderValue {
        let value = format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, fastrand::u64(1..), self.flags);
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
    }

    /// Puts a new span of this trace on an outgoing request, with the sender's `tracestate`
    /// when the trace is the sender's, unless the request already names its own trace (a
    /// target's `headers:`).
    pub fn mark(&self, outgoing: &mut HeaderMap, received: &HeaderMap) {
        if outgoing.contains_key(TRACEPARENT) {
            return;
        }
        outgoing.insert(TRACEPARENT, self.child());
        if !self.continued || outgoing.contains_key(TRACESTATE) {
            return;
        }
        // Several `tracestate` headers are one list.
        let parts: Vec<&str> = received.get_all(TRACESTATE).iter().filter_map(|v| v.to_str().ok()).collect();
        let state = parts.join(",");
        if !state.is_empty() && state.len() <= MAX_TRACESTATE {
            if let Ok(value) = HeaderValue::from_str(&state) {
                outgoing.insert(TRACESTATE, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_as_the_specification_says() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = Trace::parse(valid).unwrap();
        assert_eq!(trace.id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.flags, 1);
        let unknown = Trace::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff");
        assert_eq!(unknown.map(|t| t.flags), Some(1), "unknown flags go on as zero");
        // A later version is read by its first fields, and may carry more.
        assert!(Trace::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever").is_some());
        for invalid in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert_eq!(Trace::parse(invalid), None, "{invalid}");
        }
        let child = trace.child();
        let child = child.to_str().unwrap();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && child.ends_with("-01"), "{child}");
        assert_ne!(&child[36..52], "00f067aa0ba902b7", "a span of its own");
        assert_eq!(Trace::parse(child).map(|t| t.id()), Some(trace.id()));
    }
}
