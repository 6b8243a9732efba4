//! Pins the threads that a CPU adapter runs shaders on, one to each core.
//!
//! Lavapipe (Mesa 22.3) runs each dispatch's workgroups on a pool of worker threads (one
//! per allowed core unless `LP_NUM_THREADS` sets another count) while the submitting
//! thread waits. On the 2-core build machine Linux often
//! left both workers on one core for several seconds at a time. `netc bench` at ngf=16,
//! 128x128 then ran in spells of 0.095 to 0.110 s a step between spells of 0.070 to
//! 0.074 s. In three 200-step runs each, 13, 29 and 21 steps took more than 0.085 s
//! unpinned, and 1, 8 and 1 with each worker pinned to its own core.
//!
//! The workers are found by measurement. A short busy dispatch runs, and the candidates
//! are the threads that the driver started while the device was opened ([`thread_ids`]
//! before and after). Those that were on a CPU at least half as long as the busiest are
//! the workers, and each gets one core of the caller's affinity mask. Nothing is pinned when
//! there are more workers than cores, when another new thread was busy for a quarter to a
//! half as long as the busiest (so the workers are unclear), on GPUs, off Linux, or with
//! `NETC_PIN_THREADS=off`.

use super::RuntimeError;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The variable that turns pinning off (`off`) or on (`on`, the default).
pub const PIN_THREADS_VAR: &str = "NETC_PIN_THREADS";

/// How long the busy dispatches run while the worker threads are measured.
const MEASURE_FOR: Duration = Duration::from_millis(50);

/// The share of the busiest candidate's CPU time that a thread must have had to count as
/// a worker. Relative, so that the workers are found on a loaded machine too.
const BUSY_SHARE: f64 = 0.5;

/// The share of the measuring time the busiest candidate must have spent on a CPU for
/// any thread to count as a worker.
const MIN_BUSY_SHARE: f64 = 0.1;

/// The share of the busiest candidate's CPU time below which a thread is clearly not a
/// worker. A thread between this and [`BUSY_SHARE`] makes the workers unclear, as when
/// more workers than cores share the time unevenly, and then nothing is pinned.
const CLEARLY_IDLE_SHARE: f64 = 0.25;

/// The busy dispatch's shader: a chain of 2048 multiply-adds per invocation.
const BUSY: &str = "
@group(0) @binding(0) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    var x = f32(g.x);
    for (var i = 0u; i < 2048u; i++) {
        x = fma(x, 0.999, 1.0);
    }
    out[g.x] = x;
}
";

/// Workgroups per busy dispatch: enough for every worker of a many-core CPU.
const BUSY_WORKGROUPS: u32 = 256;

/// The outcome of [`pin_driver_threads`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Each worker thread (by thread id) was pinned to the core paired with it.
    Pinned(Vec<(i32, usize)>),
    /// Nothing was pinned, for this reason.
    Skipped(String),
    /// A call to `sched_setaffinity` failed, with this message. The workers before the
    /// failing one stay pinned.
    Failed(String),
}

/// The maximum number of characters of an invalid value that an error repeats.
const EXCERPT_CHARS: usize = 40;

/// Reads `NETC_PIN_THREADS`: `on`, `1` or `true` (or unset, or empty) pin, and `off`, `0`
/// or `false` do not.
fn setting() -> Result<bool, RuntimeError> {
    let Some(raw) = std::env::var_os(PIN_THREADS_VAR) else {
        return Ok(true);
    };
    let value = raw.to_string_lossy().into_owned();
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "on" | "1" | "true" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        _ => {
            let mut excerpt: String = value.chars().take(EXCERPT_CHARS).collect();
            if excerpt.len() < value.len() {
                excerpt.push_str("...");
            }
            Err(RuntimeError::InvalidSetting {
                name: PIN_THREADS_VAR,
                value: excerpt,
                expected: "on or off (also 1, 0, true, false); unset means on",
            })
        }
    }
}

/// Checks `NETC_PIN_THREADS` without opening a device, so that a command can reject an
/// invalid value before slow work.
pub fn check_setting() -> Result<(), RuntimeError> {
    setting().map(|_| ())
}

/// Returns the ids of this process's threads (empty off Linux).
pub fn thread_ids() -> HashSet<i32> {
    platform::cpu_times().into_keys().collect()
}

/// Finds the threads that run `device`'s shaders and pins each to its own core, when
/// `cpu_adapter` is set and `NETC_PIN_THREADS` allows it. Only threads missing from
/// `existing` (the [`thread_ids`] from before the device was opened) are candidates.
/// Takes about 0.05 s.
pub fn pin_driver_threads(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    cpu_adapter: bool,
    existing: &HashSet<i32>,
) -> Result<Pinning, RuntimeError> {
    if !setting()? {
        return Ok(Pinning::Skipped(format!("{PIN_THREADS_VAR} is off")));
    }
    if !cpu_adapter {
        return Ok(Pinning::Skipped("the adapter is not a CPU".to_string()));
    }
    platform::pin(device, queue, existing)
}

/// A compute pipeline that keeps every worker thread busy for a moment.
struct BusyWork {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
}

impl BusyWork {
    /// Creates the pipeline and runs it once, so that the driver's shader compilation is
    /// over before anything is measured.
    fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("thread probe"),
            source: wgpu::ShaderSource::Wgsl(BUSY.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("thread probe"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("thread probe output"),
            size: u64::from(BUSY_WORKGROUPS) * 64 * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry { binding: 0, resource: buffer.as_entire_binding() }],
        });
        let work = BusyWork { pipeline, group };
        work.submit(device, queue);
        work
    }

    /// Runs the busy dispatch once and waits for it.
    fn submit(&self, device: &wgpu::Device, queue: &wgpu::Queue) {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &self.group, &[]);
            pass.dispatch_workgroups(BUSY_WORKGROUPS, 1, 1);
        }
        queue.submit([encoder.finish()]);
        let _ = device.poll(wgpu::PollType::wait_indefinitely());
    }

    /// Submits the work again and again for at least [`MEASURE_FOR`] and returns the wall
    /// time taken.
    fn run(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Duration {
        let start = Instant::now();
        while start.elapsed() < MEASURE_FOR {
            self.submit(device, queue);
        }
        start.elapsed()
    }
}

#[cfg(target_os = "linux")]
mod platform {
    use super::{BusyWork, Pinning, BUSY_SHARE, CLEARLY_IDLE_SHARE, MIN_BUSY_SHARE};
    use crate::runtime::RuntimeError;
    use std::collections::{HashMap, HashSet};

    /// Returns each thread of this process and the nanoseconds it has spent on a CPU, from
    /// `/proc/self/task/*/schedstat`.
    pub(super) fn cpu_times() -> HashMap<i32, u64> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return HashMap::new();
        };
        tasks
            .filter_map(|task| {
                let task = task.ok()?;
                let tid = task.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
                Some((tid, stat.split_whitespace().next()?.parse().ok()?))
            })
            .collect()
    }

    /// Returns the cores the calling thread may run on.
    fn allowed_cores() -> Vec<usize> {
        // SAFETY: `set` is a plain bit set that `sched_getaffinity` fills; its size is
        // passed with it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
        }
    }

    /// Pins thread `tid` of this process to `core`.
    fn pin_thread(tid: i32, core: usize) -> std::io::Result<()> {
        // SAFETY: as in `allowed_cores`; `tid` names a thread of this process, and a
        // thread that has exited makes the call fail, not misbehave.
        let result = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set)
        };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Measures which new threads run the busy dispatch and pins each to its own allowed
    /// core, or returns why it pinned nothing.
    pub(super) fn pin(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        existing: &HashSet<i32>,
    ) -> Result<Pinning, RuntimeError> {
        let work = BusyWork::new(device, queue);
        let before = cpu_times();
        let wall = work.run(device, queue);
        let after = cpu_times();

        let candidates: Vec<(i32, u64)> = after
            .iter()
            .filter(|&(tid, _)| !existing.contains(tid))
            .map(|(&tid, &time)| (tid, time.saturating_sub(before.get(&tid).copied().unwrap_or(0))))
            .collect();
        let busiest = candidates.iter().map(|&(_, busy)| busy).max().unwrap_or(0) as f64;
        let floor = MIN_BUSY_SHARE * wall.as_nanos() as f64;
        let threshold = (BUSY_SHARE * busiest).max(floor);
        let idle_below = (CLEARLY_IDLE_SHARE * busiest).max(floor);
        let not_idle = candidates.iter().filter(|&&(_, busy)| busy as f64 >= idle_below).count();
        let mut workers: Vec<(i32, u64)> =
            candidates.into_iter().filter(|&(_, busy)| busy as f64 >= threshold).collect();
        workers.sort_unstable();
        tracing::debug!(?wall, ?workers, not_idle, "busy threads (id, nanoseconds on a CPU)");

        let cores = allowed_cores();
        if workers.len() < 2 {
            return Ok(Pinning::Skipped(format!(
                "found {} busy worker thread(s), so there is nothing to spread",
                workers.len()
            )));
        }
        if not_idle > workers.len() {
            return Ok(Pinning::Skipped(format!(
                "the workers are unclear: {} other thread(s) were busy for a quarter to a half \
                 as long as the busiest",
                not_idle - workers.len()
            )));
        }
        if workers.len() > cores.len() {
            return Ok(Pinning::Skipped(format!(
                "found {} worker threads for {} allowed core(s)",
                workers.len(),
                cores.len()
            )));
        }

        let mut pinned = Vec::with_capacity(workers.len());
        for (&(tid, _), &core) in workers.iter().zip(&cores) {
            match pin_thread(tid, core) {
                Ok(()) => pinned.push((tid, core)),
                Err(error) => {
                    return Ok(Pinning::Failed(format!(
                        "pinning thread {tid} to core {core} failed: {error} \
                         ({} worker(s) before it stay pinned)",
                        pinned.len()
                    )))
                }
            }
        }
        Ok(Pinning::Pinned(pinned))
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    use super::Pinning;
    use crate::runtime::RuntimeError;
    use std::collections::{HashMap, HashSet};

    pub(super) fn cpu_times() -> HashMap<i32, u64> {
        HashMap::new()
    }

    pub(super) fn pin(
        _device: &wgpu::Device,
        _queue: &wgpu::Queue,
        _existing: &HashSet<i32>,
    ) -> Result<Pinning, RuntimeError> {
        Ok(Pinning::Skipped("thread pinning is implemented for Linux only".to_string()))
    }
}
