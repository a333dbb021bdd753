//! W3C Trace Context (`traceparent`, `tracestate`): a trace a sender started is continued,
//! each request the relay sends carrying a span of its own in that trace; deliveries to
//! targets start one when the sender did not.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// One span of the relay's in a trace: the trace, this span's id, the span it continues
/// (the sender's, or the relay's own span a delivery was rendered in) and the flags. Every
/// request the relay sends names the span it is sent from as its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    trace_id: u128,
    span_id: u64,
    parent_id: Option<u64>,
    flags: u8,
}

/// A `tracestate` longer than this is not passed on (the specification lets a vendor drop
/// it); a receiver with a small header limit would refuse every delivery carrying it.
const MAX_TRACESTATE: usize = 512;

fn hex_field<const N: usize>(text: &str) -> Option<u128> {
    (text.len() == N && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

impl Trace {
    /// A new span continuing the one a `traceparent` value names, when the value is valid:
    /// version `00` exactly, or a later version read by its first four fields; `ff`,
    /// upper-case hex and all-zero ids are not valid.
    pub fn parse(value: &str) -> Option<Trace> {
        let mut fields = value.trim().split('-');
        let version = fields.next()?;
        let (trace_id, parent_id, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let version = hex_field::<2>(version)?;
        if version == 0xff || (version == 0 && fields.next().is_some()) {
            return None;
        }
        let trace_id = hex_field::<32>(trace_id).filter(|id| *id != 0)?;
        let parent_id = u64::try_from(hex_field::<16>(parent_id).filter(|id| *id != 0)?).ok()?;
        // Version 00 defines only the sampled flag: others are sent on as zero.
        let flags = u8::try_from(hex_field::<2>(flags)?).ok()? & 0x01;
        Some(Trace { trace_id, span_id: new_span_id(), parent_id: Some(parent_id), flags })
    }

    /// A new span continuing the one a request names, if it carries exactly one valid
    /// `traceparent`.
    pub fn of(headers: &HeaderMap) -> Option<Trace> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Trace::parse(value.to_str().ok()?)
    }

    /// The first span of a new trace, sampled.
    pub fn start() -> Trace {
        Trace { trace_id: fastrand::u128(1..), span_id: new_span_id(), parent_id: None, flags: 0x01 }
    }

    /// A new span under this one.
    pub fn child(&self) -> Trace {
        Trace { span_id: new_span_id(), parent_id: Some(self.span_id), ..*self }
    }

    /// The span of one send of a stored or rendered request: a child of the span its
    /// `traceparent` names, which it then names instead (each attempt is a span of its own).
    pub fn next_hop(headers: &mut HeaderMap) -> Option<Trace> {
        let hop = Trace::of(headers)?;
        headers.insert(TRACEPARENT, hop.traceparent());
        Some(hop)
    }

    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    pub fn parent_id(&self) -> Option<u64> {
        self.parent_id
    }

    /// Whether the trace is recorded: the sender's choice, or yes for a trace started here.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The `traceparent` naming this span as the parent of a request sent from it.
    pub fn traceparent(&self) -> HeaderValue {
        // `00-{trace_id:032x}-{span_id:016x}-{flags:02x}`, without the formatting machinery
        // (every request the relay sends carries one).
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let hex_into = |field: &mut [u8], bytes: &[u8]| {
            // The field is twice the bytes' length by construction, so this cannot fail.
            let _ = hex::encode_to_slice(bytes, field);
        };
        hex_into(&mut value[3..35], &self.trace_id.to_be_bytes());
        hex_into(&mut value[36..52], &self.span_id.to_be_bytes());
        hex_into(&mut value[53..55], &[self.flags]);
        HeaderValue::from_bytes(&value).unwrap_or(HeaderValue::from_static(""))
    }

    /// Names this span as the parent of an outgoing request, with the sender's
    /// `tracestate` when the trace is the sender's, unless the request already names a
    /// valid trace of its own (a target's `headers:`).
    pub fn mark(&self, outgoing: &mut HeaderMap, received: &HeaderMap) {
        // A target's own trace is kept only when it is one: an invalid value (a template
        // fed from the body, say) is replaced, as a sender's invalid one would be.
        if Trace::of(outgoing).is_some() {
            return;
        }
        outgoing.insert(TRACEPARENT, self.traceparent());
        if self.parent_id.is_none() || outgoing.contains_key(TRACESTATE) {
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
        assert_eq!(trace.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
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
        assert_eq!(trace.parent_id(), Some(0x00f067aa0ba902b7));
        let sent = trace.traceparent();
        let sent = sent.to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"), "{sent}");
        assert_ne!(&sent[36..52], "00f067aa0ba902b7", "a span of its own");
        let next = Trace::parse(sent).unwrap();
        assert_eq!((next.trace_id(), next.parent_id()), (trace.trace_id(), Some(trace.span_id())));
        let child = trace.child();
        assert_eq!((child.trace_id(), child.parent_id()), (trace.trace_id(), Some(trace.span_id())));
        assert_ne!(child.span_id(), trace.span_id());
    }

    #[test]
    fn a_traceparent_is_written_with_every_leading_zero() {
        for (trace_id, span_id, flags) in
            [(1u128, 0xabu64, 0u8), (u128::MAX, u64::MAX, 1), (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)]
        {
            let written = Trace { trace_id, span_id, parent_id: None, flags }.traceparent();
            assert_eq!(written.to_str().unwrap(), format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}"));
        }
    }
}
