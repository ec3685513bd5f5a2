//! Forwarding of `tracing` events to the app's [`Logger`].

use std::fmt::Write as _;
use std::sync::{Arc, Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::callbacks::Logger;
use crate::types::{LogLevel, LogRecord};

static LOGGER: RwLock<Option<(Arc<dyn Logger>, LogLevel)>> = RwLock::new(None);
static INSTALL: Once = Once::new();

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        Level::TRACE => LogLevel::Trace,
    }
}

fn wanted(metadata: &Metadata<'_>) -> bool {
    let guard = LOGGER.read().unwrap_or_else(|e| e.into_inner());
    let Some((_, max)) = guard.as_ref() else {
        return false;
    };
    let level = level_of(metadata.level());
    // Newt's own events down to the chosen level; dependencies only when they warn.
    level <= *max && (metadata.target().starts_with("newt") || level <= LogLevel::Warn)
}

struct Forward;

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Forward {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        wanted(metadata)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let logger = LOGGER
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(l, _)| l.clone());
        let Some(logger) = logger else { return };
        let mut message = Message::default();
        event.record(&mut message);
        let metadata = event.metadata();
        // A failing app logger cannot be reported anywhere but here: drop the record.
        let _ = logger.log(LogRecord {
            level: level_of(metadata.level()),
            target: metadata.target().to_owned(),
            message: message.0.trim_start().to_owned(),
        });
    }
}

/// Send the SDK's log events at `level` and more severe to `logger`; `None` stops logging.
/// Replaces any earlier logger.
#[uniffi::export]
pub fn set_logger(logger: Option<Arc<dyn Logger>>, level: LogLevel) {
    *LOGGER.write().unwrap_or_else(|e| e.into_inner()) = logger.map(|l| (l, level));
    INSTALL.call_once(|| {
        // If the host process already installed a global subscriber, it keeps it.
        let _ = tracing_subscriber::registry().with(Forward).try_init();
    });
    tracing::callsite::rebuild_interest_cache();
}
