//! The sandbox: the one place that builds the wasmtime `Engine`, the
//! `Linker` and each run's `Store`.
//!
//! Every run gets its own store with a memory limit, a wall-clock deadline
//! and a cancellation, all enforced by the host: an epoch ticker thread
//! advances the engine's epoch, and each store's epoch callback interrupts
//! the guest when its run is past its deadline or force-cancelled. The WASI
//! context grants nothing: no folders, no sockets, no environment, no
//! arguments; stdout and stderr go to a capped buffer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use wasmtime_wasi::p2::bindings::sync::io::poll as poll_api;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::poll::DynPollable;

use super::bindings::{files_api, host_api, log_api};
use super::host::RunState;
use super::output::CappedOutput;
use super::{Error, PluginId};

/// How often the epoch ticks: the granularity of deadlines and forced
/// cancellation.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Sandbox limits, from the `[sandbox]` section of the config.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The most linear memory one run's plugin may use, in MiB, across all
    /// of its memories.
    pub memory_limit_mib: u64,
    /// The most data one call may hand the host, in MiB: the arguments of
    /// a host call, or what a plugin's function returns (wasmtime's
    /// hostcall fuel). Past it the call traps before the host allocates.
    pub hostcall_limit_mib: u64,
    /// Milliseconds `describe` may take at install and inspect time.
    pub describe_timeout_ms: u64,
    /// Bytes of state (keys and values) a task may keep.
    pub state_limit_bytes: usize,
    /// The longest notification subject, in bytes.
    pub max_subject_bytes: usize,
    /// The longest notification body, in bytes.
    pub max_body_bytes: usize,
    /// The most fields a mapped row may have.
    pub max_fields: usize,
    /// The longest field value of a mapped row, in bytes.
    pub max_field_bytes: usize,
    /// The most row errors one import may report.
    pub max_row_errors: usize,
    /// Wall-clock time one run may take, in seconds.
    pub timeout_secs: u64,
    /// Seconds a cancelled run has to stop by itself before it is interrupted.
    pub cancel_grace_secs: u64,
    /// Plugin instances that may be alive at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Bytes of log (and of stdout, and of stderr) kept per run.
    pub log_limit_bytes: usize,
    /// The most notifications (or mapped rows per chunk) one call may return.
    pub output_limit: usize,
    /// The most files one run may write in granted folders.
    pub max_files: usize,
    /// The most bytes one run may write in granted folders, all files together.
    pub max_file_bytes: u64,
    /// Folders plugins may be granted, by name: `batch = "/srv/sis/batch"`.
    /// A plugin reaches one only with `read:folder:NAME` / `write:folder:NAME`.
    pub folders: std::collections::BTreeMap<String, std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            memory_limit_mib: 64,
            hostcall_limit_mib: 16,
            describe_timeout_ms: 2_000,
            state_limit_bytes: 1 << 20,
            max_subject_bytes: 1_024,
            max_body_bytes: 256 * 1024,
            max_fields: 256,
            max_field_bytes: 1 << 20,
            max_row_errors: 10_000,
            timeout_secs: 300,
            cancel_grace_secs: 10,
            max_instances: 32,
            log_limit_bytes: 64 * 1024,
            output_limit: 100_000,
            max_files: 1_000,
            max_file_bytes: 256 << 20,
            folders: Default::default(),
        }
    }
}

impl SandboxConfig {
    pub(crate) fn memory_limit(&self) -> usize {
        (self.memory_limit_mib as usize) << 20
    }

    pub(crate) fn hostcall_limit(&self) -> usize {
        (self.hostcall_limit_mib as usize) << 20
    }
}

/// A run's cancellation and progress, shared between the run and whoever
/// watches it. Cancel is cooperative first (the guest sees `cancelled()`),
/// then forced at the end of the grace period.
#[derive(Clone, Default)]
pub struct RunControl(Arc<Control>);

#[derive(Default)]
struct Control {
    cancelled: AtomicBool,
    /// Milliseconds after `start` at which the guest is interrupted; 0 = never.
    force_after_ms: AtomicU64,
    start: std::sync::OnceLock<Instant>,
    done: AtomicU64,
    total: AtomicU64,
}

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl")
            .field("cancelled", &self.is_cancelled())
            .field("progress", &self.progress())
            .finish()
    }
}

impl RunControl {
    /// A new control for one run.
    pub fn new() -> Self {
        let control = RunControl::default();
        let _ = control.0.start.set(Instant::now());
        control
    }

    fn start(&self) -> Instant {
        *self.0.start.get_or_init(Instant::now)
    }

    /// Asks the run to stop, and interrupts it after `grace`.
    pub fn cancel(&self, grace: Duration) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        let at = self.start().elapsed() + grace;
        self.0.force_after_ms.store((at.as_millis() as u64).max(1), Ordering::SeqCst);
    }

    /// Whether cancel was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    fn forced(&self) -> bool {
        let at = self.0.force_after_ms.load(Ordering::SeqCst);
        at != 0 && self.start().elapsed() >= Duration::from_millis(at)
    }

    /// Records progress reported by the plugin or the host.
    pub fn set_progress(&self, done: u64, total: Option<u64>) {
        self.0.done.store(done, Ordering::Relaxed);
        self.0.total.store(total.unwrap_or(0), Ordering::Relaxed);
    }

    /// Progress so far: done, and the total when known.
    pub fn progress(&self) -> (u64, Option<u64>) {
        let total = self.0.total.load(Ordering::Relaxed);
        (self.0.done.load(Ordering::Relaxed), (total > 0).then_some(total))
    }
}

/// Why the host interrupted a guest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Interrupt {
    Deadline(Duration),
    Cancelled,
}

/// The engine and linker shared by every run.
pub(crate) struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<RunState>,
    pub(crate) config: SandboxConfig,
    ticker: Ticker,
}

/// The epoch ticker's state: it ticks only while some store is alive, so
/// an idle host does not wake a hundred times a second.
#[derive(Clone)]
struct Ticker {
    live_stores: Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::Thread,
}

/// Held by each run's store; while any exists, the epoch ticks.
pub(crate) struct TickerGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for TickerGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes of a plugin's linear memory kept resident (and zeroed) when its
/// run ends, for the next run in the same slot.
const KEEP_RESIDENT: usize = 2 << 20;

impl Sandbox {
    /// Builds the engine (component model, epoch interruption, pooling
    /// allocator) and the linker (WASI that grants nothing, plus the
    /// Schoolbell host interfaces), and starts the epoch ticker.
    pub(crate) fn new(config: SandboxConfig) -> Result<Sandbox, Error> {
        let engine_error = |e: wasmtime::Error| Error::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 8)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(config.memory_limit().max(1 << 20))
            .max_component_instance_size(1 << 20)
            // Give a finished run's pages back by zeroing them rather than
            // with `madvise`: each `madvise` flushes the TLB of every core
            // the process runs on, which cost the batch queue a tenth of its
            // time (a no-op run's memory is about 1 MiB). What stays resident is
            // bounded by the pool: KEEP_RESIDENT per memory slot used.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT / 16)
            // Where the kernel can say which pages a run wrote (Linux 6.7's
            // PAGEMAP_SCAN), only those are reset: zeroing all of
            // KEEP_RESIDENT was a seventh of a no-op run's time.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .decommit_batch_size(8);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        #[allow(clippy::disallowed_methods)] // This is the one place.
        let engine = Engine::new(&wasm).map_err(engine_error)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
        // WASI's waits (`poll`, `pollable.block`) run on the host, where the
        // epoch cannot reach them: a guest asleep in one would outlast its
        // deadline and its cancel. They are replaced by waits bounded by both.
        linker.allow_shadowing(true);
        poll_api::add_to_linker::<RunState, BoundedWaits>(&mut linker, RunState::waits).map_err(engine_error)?;
        linker.allow_shadowing(false);
        log_api::add_to_linker::<RunState, HasSelf<RunState>>(&mut linker, |s| s).map_err(engine_error)?;
        host_api::add_to_linker::<RunState, HasSelf<RunState>>(&mut linker, |s| s).map_err(engine_error)?;
        files_api::add_to_linker::<RunState, HasSelf<RunState>>(&mut linker, |s| s).map_err(engine_error)?;

        let weak = engine.weak();
        let live_stores = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let live = live_stores.clone();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    if live.load(Ordering::SeqCst) == 0 {
                        drop(engine);
                        // Woken by the next store; the timeout notices a dropped engine.
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| Error::Engine(format!("cannot start the epoch thread: {e}")))?
            .thread()
            .clone();
        Ok(Sandbox { engine, linker, config, ticker: Ticker { live_stores, thread } })
    }

    /// A WASI context that grants nothing, with capped stdout and stderr.
    pub(crate) fn wasi(&self) -> (WasiCtx, CappedOutput, CappedOutput) {
        let stdout = CappedOutput::new(self.config.log_limit_bytes);
        let stderr = CappedOutput::new(self.config.log_limit_bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        (wasi, stdout, stderr)
    }

    /// The store for one run, with its memory limit, deadline and
    /// cancellation wired to the epoch.
    pub(crate) fn store(&self, mut state: RunState) -> Store<RunState> {
        self.ticker.live_stores.fetch_add(1, Ordering::SeqCst);
        state.ticker = Some(TickerGuard(self.ticker.live_stores.clone()));
        self.ticker.thread.unpark();
        #[allow(clippy::disallowed_methods)] // This is the one place.
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.config.hostcall_limit());
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            let interrupt = if state.setup.control.forced() {
                Some(Interrupt::Cancelled)
            } else if state.started.elapsed() >= state.timeout {
                Some(Interrupt::Deadline(state.timeout))
            } else {
                None
            };
            match interrupt {
                Some(i) => {
                    state.interrupted = Some(i);
                    Err(wasmtime::Error::msg("interrupted by the host"))
                }
                None => Ok(UpdateDeadline::Continue(1)),
            }
        });
        store
    }

    /// A fresh resource table.
    pub(crate) fn table() -> ResourceTable {
        ResourceTable::new()
    }
}

/// The memory limiter of one store: the limit holds for all of the run's
/// memories together (a component may have several). It records the
/// growth it refused so the run's error can say how much the plugin asked
/// for.
pub(crate) struct Limiter {
    pub(crate) limit: usize,
    pub(crate) refused: Option<usize>,
    /// Bytes of linear memory the run holds now, all memories together.
    pub(crate) used: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.refused = Some(total);
            // An error (not `Ok(false)`) traps at once: a Rust guest would
            // otherwise abort with an allocation failure that says less.
            return Err(wasmtime::Error::msg("memory limit reached"));
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// How often a guest waiting in WASI looks at its cancel.
const WAIT_CHECK: Duration = Duration::from_millis(20);

/// The `wasi:io/poll` of one run: each wait ends at the run's deadline, or
/// at once when the run is cancelled, by trapping the guest (a guest
/// blocked in a wait has nothing to clean up, and one woken early would
/// only wait again).
pub(crate) struct Waits<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) control: &'a RunControl,
    /// When the run's time is up.
    pub(crate) until: Instant,
    pub(crate) timeout: Duration,
    pub(crate) interrupted: &'a mut Option<Interrupt>,
}

/// Binds [`Waits`] into the linker.
pub(crate) struct BoundedWaits;

impl wasmtime::component::HasData for BoundedWaits {
    type Data<'a> = Waits<'a>;
}

/// Runs `wait` until it ends, the run's time is up, or the run is cancelled.
fn bounded<T>(
    control: &RunControl,
    until: Instant,
    timeout: Duration,
    wait: impl std::future::Future<Output = T>,
) -> Result<T, Interrupt> {
    wasmtime_wasi::runtime::in_tokio(async move {
        let mut wait = std::pin::pin!(wait);
        loop {
            if control.is_cancelled() {
                return Err(Interrupt::Cancelled);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Interrupt::Deadline(timeout));
            }
            tokio::select! {
                done = &mut wait => return Ok(done),
                () = tokio::time::sleep(left.min(WAIT_CHECK)) => {}
            }
        }
    })
}

impl Waits<'_> {
    fn stopped<T>(&mut self, outcome: Result<wasmtime::Result<T>, Interrupt>) -> wasmtime::Result<T> {
        outcome.unwrap_or_else(|i| {
            *self.interrupted = Some(i);
            Err(wasmtime::Error::msg("interrupted by the host"))
        })
    }
}

impl poll_api::Host for Waits<'_> {
    fn poll(&mut self, pollables: Vec<wasmtime::component::Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let outcome =
            bounded(self.control, self.until, self.timeout, async_poll::Host::poll(&mut *self.table, pollables));
        self.stopped(outcome)
    }
}

impl poll_api::HostPollable for Waits<'_> {
    fn ready(&mut self, pollable: wasmtime::component::Resource<DynPollable>) -> wasmtime::Result<bool> {
        let outcome = bounded(
            self.control,
            self.until,
            self.timeout,
            async_poll::HostPollable::ready(&mut *self.table, pollable),
        );
        self.stopped(outcome)
    }

    fn block(&mut self, pollable: wasmtime::component::Resource<DynPollable>) -> wasmtime::Result<()> {
        let outcome = bounded(
            self.control,
            self.until,
            self.timeout,
            async_poll::HostPollable::block(&mut *self.table, pollable),
        );
        self.stopped(outcome)
    }

    fn drop(&mut self, pollable: wasmtime::component::Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}

/// Describes an interrupt for a run's error.
pub(crate) fn describe_interrupt(plugin: &PluginId, i: Interrupt) -> Error {
    match i {
        Interrupt::Deadline(d) => Error::Limit {
            plugin: plugin.clone(),
            limit: format!("exceeded its time limit of {} s and was stopped", d.as_secs()),
        },
        Interrupt::Cancelled => Error::Limit {
            plugin: plugin.clone(),
            limit: "was cancelled and did not stop by itself (within its grace period, or while waiting), so it was interrupted"
                .into(),
        },
    }
}
