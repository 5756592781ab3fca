//! The system log sink: where the host's own log tools find the agent's events.
//!
//! On macOS that is the unified log, under subsystem [`SUBSYSTEM`] and category [`CATEGORY`]
//! (`log show --predicate 'subsystem == "com.jexcloud.agent"'`), written through
//! `tracing-oslog`. Other systems have none: Linux hosts read the agent's JSON file.
//!
//! The agent's logging stacks this layer beside its own JSON file layer; which OS gets one is
//! chosen in the crate root, like every other platform implementation.
//!
//! # Spans reach the sink by name only
//!
//! Every sink is installed behind [`SpanNamesOnly`] ([`install`]): it is told of each span
//! with its target and name but without its field values, and never of values recorded later.
//! Events reach it whole, with their own fields.
//!
//! The reason is memory. `tracing-oslog` 0.3 turns each new span into an `os_activity`, whose
//! description it builds as `target::name(field: value, …)` from the span's fields. Because
//! `os_activity_create` keeps the description pointer, it keeps every distinct description in
//! a process-wide map (`NAMES` in its `src/logger.rs`, `on_new_span`) that is never emptied.
//! A span field whose value changes per connection (the `rpc` span's `addr`, the peer's
//! `ip:port`) or per operation (`operation_id`) would add an entry for every connection and
//! every erase, for as long as the agent runs, which is months. Without field values the map
//! holds one entry per span call site in the code: a small, fixed number. This is also what
//! Apple asks of an activity: "The description must be a constant string within the calling
//! executable or library" (<https://developer.apple.com/documentation/os/os_activity_create>);
//! what varies belongs in the messages.
//!
//! What the unified log loses is the span fields around a message (which RPC, which peer). The
//! JSON file keeps them: it records every event with its span's fields. Keeping the fields and
//! dropping the layer's map would mean replacing `tracing-oslog` with FFI of our own to
//! `os_log` (its `os_log_with_type` is a C macro that needs a compiled shim), for a second copy
//! of what the JSON file already has.
//!
//! `tests/tests/system_log.rs` (the `jex-e2e` crate) holds this to 10,000 real connections to
//! an in-process agent, with a stand-in sink that keeps names the way `tracing-oslog` does.

use tracing::field::{Field, Value};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The unified-logging subsystem of the agent.
pub const SUBSYSTEM: &str = "com.jexcloud.agent";

/// The unified-logging category of the agent's events.
pub const CATEGORY: &str = "default";

/// The layer that writes events to the system log, installed with [`install`], or `None` where
/// the OS has no sink the agent writes to (every OS but macOS).
pub fn system_log_layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    crate::system_log_sink().map(install)
}

/// `sink` as every system log sink is installed: behind [`SpanNamesOnly`].
pub fn install<S, L>(sink: L) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S> + Send + Sync + 'static,
{
    Box::new(SpanNamesOnly { inner: sink })
}

/// A layer that shows its inner layer every span by target and name only: the span's field
/// values are taken out of what it is told when the span is created, and values recorded
/// later are not passed on. Events and every other call pass as they are. (The inner layer is
/// a plain sink: a per-layer filter inside it would not be seen by the subscriber.)
#[derive(Debug)]
pub struct SpanNamesOnly<L> {
    inner: L,
}

impl<S, L> Layer<S> for SpanNamesOnly<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let metadata = attrs.metadata();
        // An empty value set over the span's own fields: what the `span!` macros build for a
        // span whose fields are all `Empty` (`value_set` is the call they expand to).
        let none: [(&Field, Option<&dyn Value>); 0] = [];
        let values = metadata.fields().value_set(&none);
        let bare = if attrs.is_root() {
            Attributes::new_root(metadata, &values)
        } else if let Some(parent) = attrs.parent() {
            Attributes::child_of(parent.clone(), metadata, &values)
        } else {
            Attributes::new(metadata, &values)
        };
        self.inner.on_new_span(&bare, id, ctx);
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }

    /// Withheld: a value recorded on a span later is a field value too.
    fn on_record(&self, _span: &Id, _values: &Record<'_>, _ctx: Context<'_, S>) {}

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.inner.on_event(event, ctx);
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};

    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn only_macos_has_a_system_log_sink() {
        let layer = system_log_layer::<tracing_subscriber::Registry>();
        assert_eq!(layer.is_some(), cfg!(target_os = "macos"));
    }

    /// What a sink was told: each new span's `target::name(field: value, …)` (the text
    /// `tracing-oslog` keys its map by), each recorded value, and each event's fields.
    #[derive(Clone, Default)]
    struct Told(Arc<Mutex<Vec<String>>>);

    struct Text(String);

    impl tracing::field::Visit for Text {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if !self.0.is_empty() {
                self.0.push_str(", ");
            }
            let _ = write!(self.0, "{}: {value:?}", field.name());
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Told {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut text = Text(String::new());
            attrs.record(&mut text);
            let m = attrs.metadata();
            let parent = ctx.span(id).unwrap().parent().map(|p| p.name());
            self.0.lock().unwrap().push(format!(
                "span {}::{}({}) in {parent:?}",
                m.target(),
                m.name(),
                text.0
            ));
        }

        fn on_record(&self, _id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
            let mut text = Text(String::new());
            values.record(&mut text);
            self.0.lock().unwrap().push(format!("record {}", text.0));
        }

        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut text = Text(String::new());
            event.record(&mut text);
            let span = ctx.lookup_current().map(|s| s.name());
            self.0
                .lock()
                .unwrap()
                .push(format!("event {} in {span:?}", text.0));
        }
    }

    #[test]
    fn spans_reach_the_sink_without_field_values_and_events_whole() {
        let told = Told::default();
        let subscriber = tracing_subscriber::registry().with(install(told.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("rpc", rpc = "GetHost", addr = "192.0.2.7:50123");
            let _outer = outer.enter();
            let inner = tracing::info_span!("erase", operation_id = tracing::field::Empty);
            inner.record("operation_id", "op-1");
            let _inner = inner.enter();
            tracing::info!(peer = "h-1", "call answered");
        });
        let told = told.0.lock().unwrap().clone();
        let target = module_path!();
        assert_eq!(
            told,
            vec![
                format!("span {target}::rpc() in None"),
                format!("span {target}::erase() in Some(\"rpc\")"),
                "event message: call answered, peer: \"h-1\" in Some(\"erase\")".to_string(),
            ]
        );
    }
}
