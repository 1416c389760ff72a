//! What a step costs a GPU, in numbers that transfer from a software adapter to a real one:
//! kernel launches and pipelines compiled.
//!
//! * launches: cubecl's launch observer, told of every kernel issued in this process (fused
//!   ones included), before it reaches the device;
//! * compilations: cubecl's compilation logger, routed to the `log` crate, writes one line per
//!   pipeline built (a kernel id missing from the in-memory cache); a `log` sink counts them.
//!
//! [`install`] must run before the first device is used (cubecl reads its configuration once).
//! Counting costs one atomic load per launch and nothing per cached pipeline. The compilation
//! lines are delivered by cubecl's logging task, so [`settle`] waits for them to arrive before a
//! step's count is read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
use cubecl_runtime::logging::{LaunchObservation, LaunchObserver};

static LAUNCHES: AtomicUsize = AtomicUsize::new(0);
static COMPILATIONS: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static COMPILATIONS_COUNTED: AtomicBool = AtomicBool::new(false);

/// Launches and compilations so far in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub launches: usize,
    /// `None` when cubecl's configuration was set before [`install`] could route its
    /// compilation log.
    pub compilations: Option<usize>,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            launches: self.launches - earlier.launches,
            compilations: match (self.compilations, earlier.compilations) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
        }
    }
}

/// Counts launches; with [`profile`] on, also times each one (the launch path then waits for
/// every kernel: a breakdown of where time goes, not a measurement of the pass).
struct CountLaunches;

static PROFILING: AtomicBool = AtomicBool::new(false);
static PROFILE: std::sync::Mutex<Vec<(&'static str, f64)>> = std::sync::Mutex::new(Vec::new());

impl LaunchObserver for CountLaunches {
    fn launched(&self, _kernel: &'static str) {
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
    }

    fn timing(&self) -> cubecl_runtime::logging::TimingRequest {
        // Decided once, at install: cubecl asks that the answer never change while installed.
        if PROFILING.load(Ordering::Relaxed) {
            cubecl_runtime::logging::TimingRequest::Resolved
        } else {
            cubecl_runtime::logging::TimingRequest::None
        }
    }

    fn timed(
        &self,
        kernel: &'static str,
        duration: cubecl_runtime::logging::Duration,
        _method: cubecl_runtime::logging::TimingMethod,
    ) {
        if let Ok(mut p) = PROFILE.lock() {
            p.push((kernel, duration.as_secs_f64()));
        }
    }
}

/// Time every kernel from now on (set before [`install`]; each launch then waits for its
/// kernel). [`take_profile`] returns the times per kernel name.
pub fn enable_profile() {
    PROFILING.store(true, Ordering::SeqCst);
}

/// Kernel times since the last call, summed per kernel name: `(name, launches, seconds)`,
/// slowest first.
pub fn take_profile() -> Vec<(String, usize, f64)> {
    let entries = PROFILE.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
    let mut by_name: std::collections::HashMap<&'static str, (usize, f64)> = Default::default();
    for (k, t) in entries {
        let e = by_name.entry(k).or_default();
        e.0 += 1;
        e.1 += t;
    }
    let mut out: Vec<(String, usize, f64)> = by_name.into_iter().map(|(k, (n, t))| (short_name(k), n, t)).collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out
}

/// A kernel's type name without its module paths and generic arguments.
fn short_name(name: &str) -> String {
    let head = name.split('<').next().unwrap_or(name);
    head.rsplit("::").next().unwrap_or(head).to_string()
}

/// Counts cubecl's compilation lines; passes warnings and errors on to stderr natively.
struct CompilationSink;

const COMPILATION_TARGET: &str = "cubecl::compilation";

impl log::Log for CompilationSink {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target() == COMPILATION_TARGET || metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if record.target() == COMPILATION_TARGET {
            COMPILATIONS.fetch_add(1, Ordering::Relaxed);
        } else if record.level() <= log::Level::Warn {
            report(&format!("{}: {}", record.target(), record.args()));
        }
    }

    fn flush(&self) {}
}

#[cfg(not(target_family = "wasm"))]
fn report(line: &str) {
    eprintln!("{line}");
}

/// In the browser the core has no console (no web dependencies): dropped, as without a sink.
#[cfg(target_family = "wasm")]
fn report(_line: &str) {}

static SINK: CompilationSink = CompilationSink;

/// Start counting. Call once, before any GPU device is used; later calls do nothing. Returns
/// whether compilations are counted (false when cubecl was configured first, or another `log`
/// sink is installed).
pub fn install() -> bool {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return COMPILATIONS_COUNTED.load(Ordering::SeqCst);
    }
    // The observation lasts for the process.
    std::mem::forget(LaunchObservation::new(Arc::new(CountLaunches)));
    let mut config = base_config();
    config.compilation.logger.level = cubecl_runtime::config::compilation::CompilationLogLevel::Basic;
    config.compilation.logger.log = Some(cubecl_environment::config::logger::LogCrateLevel::Info);
    let counted = CubeClRuntimeConfig::try_set(config) && log::set_logger(&SINK).is_ok();
    if counted {
        log::set_max_level(log::LevelFilter::Info);
    }
    COMPILATIONS_COUNTED.store(counted, Ordering::SeqCst);
    counted
}

/// The configuration cubecl would have read itself (`cubecl.toml`, `CUBECL_*` variables).
#[cfg(not(target_family = "wasm"))]
fn base_config() -> CubeClRuntimeConfig {
    CubeClRuntimeConfig::from_current_dir().override_from_env()
}

#[cfg(target_family = "wasm")]
fn base_config() -> CubeClRuntimeConfig {
    CubeClRuntimeConfig::default()
}

/// The counts so far.
pub fn counts() -> Counts {
    Counts {
        launches: LAUNCHES.load(Ordering::Relaxed),
        compilations: COMPILATIONS_COUNTED.load(Ordering::Relaxed).then(|| COMPILATIONS.load(Ordering::Relaxed)),
    }
}

/// Wait (natively, up to half a second) until the compilation count has been still for 20 ms:
/// cubecl's logging task delivers the lines after the launches that caused them.
pub fn settle() {
    #[cfg(not(target_family = "wasm"))]
    {
        if !COMPILATIONS_COUNTED.load(Ordering::Relaxed) {
            return;
        }
        let start = std::time::Instant::now();
        let mut last = COMPILATIONS.load(Ordering::Relaxed);
        let mut still = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(500) {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let now = COMPILATIONS.load(Ordering::Relaxed);
            if now != last {
                last = now;
                still = std::time::Instant::now();
            } else if still.elapsed() >= std::time::Duration::from_millis(20) {
                break;
            }
        }
    }
}

/// What a GPU device's memory pools hold, in bytes: `(in use, reserved)` (reserved includes what
/// is in use and what the pools keep for reuse). `None` on burn's CPU backend, whose memory is
/// the process's own.
pub fn gpu_memory(device: &burn::tensor::Device) -> Option<(u64, u64)> {
    #[cfg(feature = "wgpu")]
    {
        match device.as_dispatch() {
            burn::backend::DispatchDevice::Cube(d) => {
                let usage = d.client().memory_report(cubecl_runtime::memory_management::MemoryScope::Device).usage();
                Some((usage.bytes_in_use, usage.bytes_reserved))
            }
            _ => None,
        }
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = device;
        None
    }
}
