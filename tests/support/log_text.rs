//! A `tracing` subscriber that keeps every span's and event's name and
//! fields as text, for tests that search the logs (for a raw key, say).

use std::sync::{Arc, Mutex};

/// Records every span (its name and fields) and every event (its fields,
/// the message included) as one line of text each, up to a level.
#[derive(Clone)]
pub(crate) struct LogText {
    log: Arc<Mutex<String>>,
    level: tracing::Level,
}

impl Default for LogText {
    /// Records everything.
    fn default() -> Self {
        LogText::up_to(tracing::Level::TRACE)
    }
}

impl LogText {
    /// Records only what is at `level` or more severe.
    #[allow(dead_code)]
    pub(crate) fn up_to(level: tracing::Level) -> Self {
        LogText {
            log: Arc::default(),
            level,
        }
    }

    /// Everything recorded so far.
    pub(crate) fn text(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for LogText {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if self.enabled(metadata) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= self.level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.level))
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut log = self.log.lock().unwrap();
        log.push_str(span.metadata().name());
        span.record(&mut Fields(&mut log));
        log.push('\n');
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.log.lock().unwrap()));
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut log = self.log.lock().unwrap();
        event.record(&mut Fields(&mut log));
        log.push('\n');
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}
