//! One attempt to send a rendered request, the same for a sync route's answer, the
//! delivery engine and the admin test call: the target's credentials and signature added
//! (from the config serving now), the private-address guard, the send, the answer read up
//! to a bound, and the attempt record with every credential masked. Judging the answer is
//! [`crate::delivery::verdict`]'s job.

use std::time::Duration;

use bytes::Bytes;

use crate::delivery::client::{self, header_pairs, Attempt, Outbound, MAX_RECORDED_ANSWER};
use crate::delivery::link::UpstreamLink;
use crate::delivery::request::{OutgoingRequest, WireRequest};
use crate::delivery::target::Target;
use crate::redact::Redactions;
use crate::store::AttemptRecord;
use crate::telemetry::Span;
use crate::trace::{Trace, TRACEPARENT};
use opentelemetry::trace::SpanKind;

/// What one attempt sent and got.
pub struct Tried {
    /// The request as it went out, or would have (signing failed): credentials included,
    /// so show it masked and never store it.
    pub sent: WireRequest,
    pub answer: Attempt,
    /// For the delivery log; `counted` is true until the verdict says otherwise.
    pub record: AttemptRecord,
}

/// How to send one attempt.
pub struct AttemptSettings<'a> {
    pub outbound: &'a Outbound,
    /// Its target in the config serving now; `None` when a reload removed it (the rendered
    /// request is then sent as it was stored).
    pub target: Option<&'a Target>,
    /// Whether the private-address guard is off for this delivery.
    pub trusted: bool,
    pub redactions: &'a Redactions,
    /// The sender's connection's own upstream link, for a send made while it waits (a
    /// sync route's).
    pub link: Option<&'a UpstreamLink>,
    pub timeout: Duration,
    /// The answer body is read up to this many bytes (the record keeps at most 64 KiB).
    pub max_answer: usize,
    /// Which delivery this is, for the attempt's span; `None` for the admin test call.
    pub of: Option<AttemptOf<'a>>,
}

/// The delivery an attempt belongs to.
#[derive(Clone, Copy)]
pub struct AttemptOf<'a> {
    pub event_id: &'a str,
    /// `None` for a sync delivery, logged after its answer.
    pub delivery_id: Option<&'a str>,
    /// 1 for the first attempt.
    pub number: i64,
}

impl<'a> AttemptSettings<'a> {
    /// Sending a request a target rendered just now: guarded unless the target is trusted
    /// or `outbound.allow_private` is set.
    pub fn for_rendered(
        outbound: &'a Outbound,
        target: &'a Target,
        allow_private: bool,
        redactions: &'a Redactions,
        max_answer: usize,
    ) -> AttemptSettings<'a> {
        AttemptSettings {
            outbound,
            target: Some(target),
            trusted: target.trusted || allow_private,
            redactions,
            link: None,
            timeout: target.timeout,
            max_answer,
            of: None,
        }
    }

    pub async fn attempt(&self, mut rendered: OutgoingRequest, now_ms: i64) -> Tried {
        // Each attempt is a span of its own, under the one the request was rendered in.
        let rendered_in = rendered.headers.get(TRACEPARENT).and_then(|value| value.to_str().ok()).map(str::to_string);
        let span = Trace::next_hop(&mut rendered.headers).and_then(|hop| self.span(hop, &rendered));
        let delivery_url = rendered.url.clone();
        let prepared = match self.target {
            Some(target) => target.prepare(rendered, now_ms),
            None => Ok(WireRequest::bare(rendered)),
        };
        let (sent, answer) = match prepared {
            // A stored credential marker nothing filled: its variable is no longer this
            // target's, or the target now sends elsewhere. Never sent half-filled.
            Ok(wire) if wire.url.contains('\u{1}') => {
                (wire, Attempt::failed_before_sending("a credential of this delivery is no longer in the target's config".to_string()))
            }
            Ok(wire) => {
                // Only a trusted target's: the link's connect does not pass the guard.
                let answer = match self.link.filter(|_| self.trusted).and_then(|link| link.sending(&wire, self.timeout)) {
                    Some(sending) => client::attempt_by(sending, self.timeout, self.max_answer).await,
                    None => self.outbound.attempt(self.trusted, &wire, self.timeout, self.max_answer).await,
                };
                (wire, answer)
            }
            Err(failed) => {
                let (err, unsigned) = *failed;
                (unsigned, Attempt::failed_before_sending(err.to_string()))
            }
        };
        if let Some(mut span) = span {
            if let Some(status) = answer.status {
                span.set("http.response.status_code", i64::from(status));
            }
            match (&answer.error, answer.status) {
                (Some(error), _) => span.fail(error.clone()),
                (None, Some(status)) if status >= 400 => span.fail(format!("answer {status}")),
                _ => {}
            }
            span.end();
        }
        let mut recorded = RecordedRequest::of(&sent, self.target, self.redactions);
        // The log keeps the `traceparent` the delivery was rendered with (its trace and the
        // relay's span): the attempt's own span id is all that changes per attempt, and
        // recording it would store every attempt's headers again.
        if let Some(rendered_in) = rendered_in {
            for (_, value) in recorded.headers.iter_mut().filter(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT.as_str())) {
                value.clone_from(&rendered_in);
            }
        }
        let record = AttemptRecord {
            started_at: now_ms,
            duration_ms: i64::try_from(answer.duration.as_millis()).unwrap_or(i64::MAX),
            // Left to the delivery's copy (masked when read back) unless the signer changed it,
            // or a value only this config knows to mask is in it: the config serving when it
            // is read may no longer know it.
            request_url: (sent.url != delivery_url || recorded.url_masked_by_config).then_some(recorded.url),
            request_method: recorded.method,
            request_headers: recorded.headers,
            request_body: recorded.body,
            status: answer.status,
            response_headers: header_pairs(&answer.headers),
            response_body: answer.answer.slice(..answer.answer.len().min(MAX_RECORDED_ANSWER)),
            error: answer.error.clone(),
            counted: true,
        };
        Tried { sent, answer, record }
    }

    /// The attempt's span, named by what it sends: never its URL's path or query, headers or
    /// body (they may carry credentials), only the host.
    fn span(&self, ids: Trace, rendered: &OutgoingRequest) -> Option<Span> {
        let mut span = Span::begin(ids, "attempt", SpanKind::Client)?
            .with("hookrelay.route", rendered.route.clone())
            .with("hookrelay.target", rendered.target.clone())
            .with("http.request.method", rendered.method.to_string());
        if let Some(host) = url::Url::parse(&rendered.url).ok().and_then(|url| url.host_str().map(str::to_string)) {
            span.set("server.address", host);
        }
        if let Some(of) = self.of {
            span.set("hookrelay.event_id", of.event_id.to_string());
            if let Some(delivery) = of.delivery_id {
                span.set("hookrelay.delivery_id", delivery.to_string());
            }
            span.set("hookrelay.attempt", of.number);
        }
        Some(span)
    }
}

/// The request part of an attempt record: the request as it went on the wire, with every
/// credential masked (credential headers fixed or named by the config, credential query
/// values, a signature carried in the body).
pub struct RecordedRequest {
    pub url: String,
    /// Whether `url` masks something only this config knows to.
    pub url_masked_by_config: bool,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    pub fn of(sent: &WireRequest, target: Option<&Target>, redactions: &Redactions) -> RecordedRequest {
        let signed_body = match target.and_then(|t| t.signer.as_ref()) {
            Some(signer) => signer.recorded_body(&sent.body),
            None => sent.body.clone(),
        };
        let content_type = sent.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let (url, url_masked_by_config) = redactions.url_shown(&sent.url);
        RecordedRequest {
            url,
            url_masked_by_config,
            method: sent.method.to_string(),
            headers: redactions.mask_headers(header_pairs(&sent.headers)),
            body: redactions.body(content_type, &signed_body),
        }
    }
}
