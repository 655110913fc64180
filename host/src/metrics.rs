//! Metrics: what operators scrape at `GET /metrics`, in Prometheus' text
//! format, through the `metrics` facade and its Prometheus exporter.
//!
//! Counters and histograms are recorded where things happen (a run ends, a
//! fire is late, a plugin traps, an email is accepted); the gauges (queue
//! depth, the outbox by status, the store's size) are read at each scrape
//! by [`crate::app::Health::observe`]. Labels are names an admin chose (task
//! kinds, plugin and rule names, statuses), never record values.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Runs that ended, by task kind and final status.
pub const RUNS: &str = "schoolbell_runs_total";
/// How long runs took, by task kind.
pub const RUN_SECONDS: &str = "schoolbell_run_duration_seconds";
/// Runs waiting in the queue.
pub const QUEUE_DEPTH: &str = "schoolbell_queue_depth";
/// How long the oldest due run has waited in the queue.
pub const QUEUE_OLDEST: &str = "schoolbell_queue_oldest_age_seconds";
/// How late fires were, against their due time.
pub const FIRE_LATENESS: &str = "schoolbell_fire_lateness_seconds";
/// Plugin instances made (one per run), by plugin.
pub const PLUGIN_INSTANTIATIONS: &str = "schoolbell_plugin_instantiations_total";
/// Plugins that crashed (trapped), by plugin.
pub const PLUGIN_TRAPS: &str = "schoolbell_plugin_traps_total";
/// Plugins stopped at a sandbox limit, by plugin.
pub const PLUGIN_LIMITS: &str = "schoolbell_plugin_limit_hits_total";
/// Records a rule decided, by rule.
pub const RULE_EVALUATIONS: &str = "schoolbell_rule_evaluations_total";
/// Rule evaluations that failed (an error, a limit), by rule.
pub const RULE_FAILURES: &str = "schoolbell_rule_failures_total";
/// Rows imports planned, by outcome (`new`, `changed`, `unchanged`, `error`, ...).
pub const IMPORT_ROWS: &str = "schoolbell_import_rows_total";
/// Outbox entries, by status (`pending`, `sent`, `failed`).
pub const OUTBOX: &str = "schoolbell_outbox_entries";
/// From an email's queueing to the server's acceptance.
pub const SEND_SECONDS: &str = "schoolbell_email_send_latency_seconds";
/// Failed SMTP attempts, by kind (`connection`, `refused`).
pub const SMTP_ERRORS: &str = "schoolbell_smtp_errors_total";
/// The store's size on disk.
pub const STORE_BYTES: &str = "schoolbell_store_size_bytes";
/// Seconds since the scheduler loop last ticked.
pub const SCHEDULER_TICK_AGE: &str = "schoolbell_scheduler_last_tick_age_seconds";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder, once; every later call returns the
/// same handle. `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            // Seconds from a millisecond no-op to an hour-long import.
            let buckets = [0.001, 0.005, 0.02, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The scrape: every series in Prometheus' text format.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RUNS, "Runs that ended, by task kind and final status.");
    describe_histogram!(RUN_SECONDS, metrics::Unit::Seconds, "How long runs took, by task kind.");
    describe_gauge!(QUEUE_DEPTH, "Runs waiting in the queue.");
    describe_gauge!(QUEUE_OLDEST, metrics::Unit::Seconds, "How long the oldest due run has waited.");
    describe_histogram!(FIRE_LATENESS, metrics::Unit::Seconds, "How late fires were, against their due time.");
    describe_counter!(PLUGIN_INSTANTIATIONS, "Plugin instances made (one per run), by plugin.");
    describe_counter!(PLUGIN_TRAPS, "Plugins that crashed, by plugin.");
    describe_counter!(PLUGIN_LIMITS, "Plugins stopped at a sandbox limit, by plugin.");
    describe_counter!(RULE_EVALUATIONS, "Records rules decided, by rule.");
    describe_counter!(RULE_FAILURES, "Rule evaluations that failed, by rule.");
    describe_counter!(IMPORT_ROWS, "Rows imports planned, by outcome.");
    describe_gauge!(OUTBOX, "Outbox entries, by status.");
    describe_histogram!(SEND_SECONDS, metrics::Unit::Seconds, "From an email's queueing to its acceptance.");
    describe_counter!(SMTP_ERRORS, "Failed SMTP attempts, by kind.");
    describe_gauge!(STORE_BYTES, metrics::Unit::Bytes, "The store's size on disk.");
    describe_gauge!(SCHEDULER_TICK_AGE, metrics::Unit::Seconds, "Seconds since the scheduler loop last ticked.");
}

/// A run ended.
pub(crate) fn run_ended(kind: &'static str, status: &str, took: Duration) {
    counter!(RUNS, "kind" => kind, "status" => status.to_string()).increment(1);
    histogram!(RUN_SECONDS, "kind" => kind).record(took.as_secs_f64());
}

/// A due time fired `late` after it.
pub(crate) fn fired(late: Duration) {
    histogram!(FIRE_LATENESS).record(late.as_secs_f64());
}

/// A plugin was instantiated for a run.
pub(crate) fn instantiated(plugin: &str) {
    counter!(PLUGIN_INSTANTIATIONS, "plugin" => plugin.to_string()).increment(1);
}

/// A plugin failed its run: counted when it trapped or hit a limit.
pub(crate) fn plugin_failed(error: &crate::plugins::Error) {
    use crate::plugins::Error;
    match error {
        Error::Trap { plugin, .. } => counter!(PLUGIN_TRAPS, "plugin" => plugin.name.clone()).increment(1),
        Error::Limit { plugin, .. } | Error::OutputTooLarge { plugin, .. } => {
            counter!(PLUGIN_LIMITS, "plugin" => plugin.name.clone()).increment(1)
        }
        _ => {}
    }
}

/// A rule decided `evaluated` records, `failed` of them with an error.
pub(crate) fn rule_used(rule: &str, evaluated: u64, failed: u64) {
    if evaluated > 0 {
        counter!(RULE_EVALUATIONS, "rule" => rule.to_string()).increment(evaluated);
    }
    if failed > 0 {
        counter!(RULE_FAILURES, "rule" => rule.to_string()).increment(failed);
    }
}

/// An import planned rows, counted by outcome.
pub(crate) fn import_rows(counts: &BTreeMap<String, u64>) {
    for (outcome, n) in counts {
        counter!(IMPORT_ROWS, "outcome" => outcome.clone()).increment(*n);
    }
}

/// An email was accepted `latency` after it was queued.
pub(crate) fn email_sent(latency: Duration) {
    histogram!(SEND_SECONDS).record(latency.as_secs_f64());
}

/// An SMTP attempt failed; `connection` when the server could not be reached.
pub(crate) fn smtp_error(connection: bool) {
    counter!(SMTP_ERRORS, "kind" => if connection { "connection" } else { "refused" }).increment(1);
}

/// The figures read at a scrape.
pub(crate) struct Gauges {
    pub(crate) queue_depth: usize,
    pub(crate) queue_oldest: Duration,
    pub(crate) outbox: BTreeMap<&'static str, u64>,
    pub(crate) store_bytes: u64,
    pub(crate) tick_age: Option<Duration>,
}

/// Sets the gauges from figures read now.
pub(crate) fn set(g: &Gauges) {
    gauge!(QUEUE_DEPTH).set(g.queue_depth as f64);
    gauge!(QUEUE_OLDEST).set(g.queue_oldest.as_secs_f64());
    for (status, n) in &g.outbox {
        gauge!(OUTBOX, "status" => *status).set(*n as f64);
    }
    gauge!(STORE_BYTES).set(g.store_bytes as f64);
    if let Some(age) = g.tick_age {
        gauge!(SCHEDULER_TICK_AGE).set(age.as_secs_f64());
    }
}
