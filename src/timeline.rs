//! Where a start spends its time: the phases of `lazyimg mount` (config,
//! policy, credentials, cache lookup, manifest, index discovery, …, FUSE mount,
//! live), each with its wall time and the registry requests and bytes made
//! inside it (issue 10: "`lazyimg mount -v` prints a timeline").
//!
//! Phases are `tracing` spans ([`phase`]); the registry reports each request
//! and the bytes it received as events ([`request`], [`received`]). A
//! [`Recorder`] layer, installed once per process, turns them into [`Phase`]
//! records. Without it they cost what any disabled span costs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The target of phase spans and of request events: a [`Recorder`] is
/// installed with a filter that lets exactly this target through.
pub const TARGET: &str = "lazyimg::timeline";
/// The name of phase spans.
const PHASE: &str = "phase";

/// A span for phase `name` (a short lower-case label such as `"tree load"`);
/// the phase lasts until the span closes.
pub fn phase(name: &'static str) -> tracing::Span {
    tracing::info_span!(target: TARGET, PHASE, name)
}

/// Reports one registry call made in the current phase: each attempt counts;
/// an authentication counts once, though it is a ping and a token request
/// on a registry with a token service.
pub fn request() {
    tracing::trace!(target: TARGET, requests = 1u64);
}

/// Reports `bytes` of response bodies received in the current phase.
pub fn received(bytes: u64) {
    tracing::trace!(target: TARGET, bytes);
}

/// One finished phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    /// From the span's creation to its close.
    pub wall: Duration,
    /// Registry calls made inside it (0 for a local phase; see [`request`]).
    pub requests: u64,
    /// Response body bytes received inside it.
    pub bytes: u64,
}

impl Phase {
    /// One line for people: `NAME  WALL ms[, N requests, B bytes]`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:<20} {:>8.1} ms",
            self.name,
            self.wall.as_secs_f64() * 1e3
        );
        if self.requests > 0 || self.bytes > 0 {
            line.push_str(&format!(
                ", {} requests, {} bytes",
                self.requests, self.bytes
            ));
        }
        line
    }
}

/// The phases recorded so far in this process, in the order they ended.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    done: Arc<Mutex<Vec<Phase>>>,
}

impl Recorder {
    /// The phases that have ended, in order.
    pub fn phases(&self) -> Vec<Phase> {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What an open phase span carries.
struct Open {
    name: String,
    started: Instant,
    requests: u64,
    bytes: u64,
}

#[derive(Default)]
struct Fields {
    name: Option<String>,
    requests: u64,
    bytes: u64,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.name = Some(value.to_string());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "requests" => self.requests += value,
            "bytes" => self.bytes += value,
            _ => {}
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        if meta.target() != TARGET || meta.name() != PHASE {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Open {
                name: fields.name.unwrap_or_default(),
                started: Instant::now(),
                requests: 0,
                bytes: 0,
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The innermost open phase gets the request.
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(open) = span.extensions_mut().get_mut::<Open>() {
                open.requests += fields.requests;
                open.bytes += fields.bytes;
                return;
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Phase {
                name: open.name,
                wall: open.started.elapsed(),
                requests: open.requests,
                bytes: open.bytes,
            });
    }
}
