//! Adapter choice and device creation.
//!
//! Needs: a Vulkan, Metal, DX12 or GL driver that wgpu can load (lavapipe counts).
//! Guarantees: the device is created with the adapter's own limits rather than the WebGPU
//! defaults, so large bindings and grids work wherever the hardware allows them, and
//! with `SUBGROUP`, `TIMESTAMP_QUERY` and `PIPELINE_CACHE` when the adapter has them.

use super::affinity::{pin_driver_threads, Pinning};
use super::pipeline_cache::DiskPipelineCache;
use super::probe::LoadRates;
use super::RuntimeError;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use wgpu::DeviceType;

/// The environment variable that overrides the texture-operand choice.
const TEXTURE_OPERANDS_VAR: &str = "NETC_TEXTURE_OPERANDS";

/// How to install a software adapter, for the error raised when none is found.
pub const LAVAPIPE_HINT: &str = "install Mesa's software Vulkan driver (lavapipe) with \
     `apt-get install mesa-vulkan-drivers libvulkan1`, or a GPU driver";

/// One adapter as `netc devices` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub subgroups: bool,
}

/// An open device with the adapter it came from and the limits it was created with.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Whether kernels read their large operands from textures
    /// ([`crate::codegen::Tuning::texture_operands`]).
    pub texture_operands: bool,
    /// The load speeds measured on a CPU adapter, which chose `texture_operands` unless
    /// `NETC_TEXTURE_OPERANDS` set it.
    pub load_rates: Option<LoadRates>,
    /// wgpu's pipeline cache and its file, where the adapter supports one.
    pub pipeline_cache: Option<DiskPipelineCache>,
    /// Device errors that no error scope caught, recorded by the device's handler and
    /// reported by the next read-back ([`Gpu::take_device_error`]) instead of wgpu's
    /// default panic.
    device_errors: Arc<Mutex<Vec<String>>>,
    /// The threads of the process before the adapter was chosen: the ones the driver did
    /// not start.
    threads_before: HashSet<i32>,
    /// Pipelines of every program compiled on this device, reused across compiles.
    pub kernels: super::KernelCache,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Enumerates the adapters of the primary backends (Vulkan, Metal, DX12), or of GL when
/// there are none, because probing GL needs a display that headless machines lack.
fn all_adapters() -> Vec<wgpu::Adapter> {
    let instance = instance();
    let primary = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    if !primary.is_empty() {
        return primary;
    }
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::GL))
}

/// Ranks adapters for the default choice: real GPUs first, then software ones.
fn preference(info: &wgpu::AdapterInfo) -> u32 {
    let kind = match info.device_type {
        DeviceType::DiscreteGpu => 0,
        DeviceType::IntegratedGpu => 1,
        DeviceType::VirtualGpu => 2,
        DeviceType::Other => 3,
        DeviceType::Cpu => 4,
    };
    // NOTE: Vulkan first because wgpu's GL backend lacks several compute features netc uses.
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    kind * 2 + backend
}

fn summarize(adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        subgroups: adapter.features().contains(wgpu::Features::SUBGROUP),
    }
}

/// Lists every adapter wgpu finds, in the order the default choice prefers them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let mut adapters = all_adapters();
    adapters.sort_by_key(|a| preference(&a.get_info()));
    adapters.iter().map(summarize).collect()
}

/// Picks the adapter whose name contains `request` (case-insensitive), or the preferred
/// one when `request` is `None`.
fn choose_adapter(request: Option<&str>) -> Result<wgpu::Adapter, RuntimeError> {
    let mut adapters = all_adapters();
    adapters.sort_by_key(|a| preference(&a.get_info()));
    if adapters.is_empty() {
        return Err(RuntimeError::NoAdapter { hint: LAVAPIPE_HINT });
    }
    let Some(request) = request else {
        return Ok(adapters.remove(0));
    };
    let needle = request.to_lowercase();
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    match adapters.iter().position(|a| a.get_info().name.to_lowercase().contains(&needle)) {
        Some(index) => Ok(adapters.swap_remove(index)),
        None => Err(RuntimeError::AdapterNotFound {
            request: request.to_string(),
            available: names.join(", "),
        }),
    }
}

impl Gpu {
    /// Opens the adapter `request` names (a substring of a name `netc devices` lists), or
    /// the preferred one.
    pub fn open(request: Option<&str>) -> Result<Gpu, RuntimeError> {
        let threads_before = super::affinity::thread_ids();
        let adapter = choose_adapter(request)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamp queries serve only `netc bench`'s per-kernel table.
        let wanted = wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::PIPELINE_CACHE;
        let features = adapter.features() & wanted;
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("netc"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&descriptor)).map_err(|e| {
                RuntimeError::RequestDevice { adapter: info.name.clone(), message: e.to_string() }
            })?;
        tracing::info!(adapter = %info.name, backend = ?info.backend, "opened device");
        let cpu = info.device_type == DeviceType::Cpu;
        let (texture_operands, load_rates) = match texture_setting()? {
            Some(on) => (on, None),
            None if cpu => {
                let rates = LoadRates::measure(&device, &queue);
                tracing::info!(
                    storage_gbps = rates.storage,
                    texture_gbps = rates.texture,
                    texture_speedup = rates.texture_speedup,
                    texture_operands = rates.favour_textures(),
                    "measured load speeds"
                );
                (rates.favour_textures(), Some(rates))
            }
            None => (false, None),
        };
        let pipeline_cache = DiskPipelineCache::open(&device, &info);
        let device_errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = Arc::clone(&device_errors);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            tracing::error!(%error, "device error");
            recorded.lock().unwrap_or_else(|e| e.into_inner()).push(error.to_string());
        }));
        Ok(Gpu {
            adapter,
            device,
            queue,
            info,
            limits,
            features,
            texture_operands,
            load_rates,
            pipeline_cache,
            device_errors,
            threads_before,
            kernels: Default::default(),
        })
    }

    /// Pins the threads that run this device's shaders to a core each, on CPU adapters
    /// (see [`super::affinity`]), and logs the outcome. It takes about 0.05 s, so the
    /// long-running commands call it.
    pub fn pin_driver_threads(&self) -> Result<Pinning, RuntimeError> {
        let cpu = self.info.device_type == DeviceType::Cpu;
        let pinning = pin_driver_threads(&self.device, &self.queue, cpu, &self.threads_before)?;
        match &pinning {
            Pinning::Pinned(threads) => {
                let threads: Vec<String> =
                    threads.iter().map(|(tid, core)| format!("{tid}->{core}")).collect();
                tracing::info!(threads = %threads.join(" "), "pinned the driver's worker threads");
            }
            Pinning::Failed(message) => {
                tracing::warn!(%message, "failed to pin the driver's worker threads");
            }
            Pinning::Skipped(reason) => {
                tracing::debug!(%reason, "left the driver's threads unpinned");
            }
        }
        Ok(pinning)
    }

    /// Returns the first device error recorded since the last call, if any, as an error.
    pub fn take_device_error(&self) -> Result<(), RuntimeError> {
        let mut errors = self.device_errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.remove(0);
        errors.clear();
        Err(RuntimeError::Device { message })
    }

    /// Returns the compile target that this device's limits and features allow.
    pub fn target(&self) -> crate::codegen::Target {
        let mut target = crate::codegen::Target::from_limits(&self.limits, self.features);
        let fixed = self.info.subgroup_min_size == self.info.subgroup_max_size;
        target.subgroup_size = (target.subgroups && fixed).then_some(self.info.subgroup_min_size);
        target.cpu = self.info.device_type == wgpu::DeviceType::Cpu;
        target.tuning.texture_operands = self.texture_operands;
        // On lavapipe a per-channel sum over 256 invocations with barriers took 1-2 ms
        // even for a 2x2 channel, and one-subgroup workgroups without barriers cut the
        // ngf=16, 128x128 training step from 0.165 to 0.130 s (measured).
        if let (true, Some(size)) = (target.cpu, target.subgroup_size) {
            target.tuning.reduction_workgroup_size = size;
        }
        target
    }
}

/// Reads `NETC_TEXTURE_OPERANDS`: `on` or `off` force the choice, and `auto` or no value
/// leave it to the load-speed probe on CPU adapters (GPUs keep storage buffers).
fn texture_setting() -> Result<Option<bool>, RuntimeError> {
    let Some(raw) = std::env::var_os(TEXTURE_OPERANDS_VAR) else {
        return Ok(None);
    };
    // A value that is not UTF-8 is reported as an invalid setting too, not ignored.
    let value = raw.to_string_lossy().into_owned();
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(None),
        "on" | "1" | "true" => Ok(Some(true)),
        "off" | "0" | "false" => Ok(Some(false)),
        _ => Err(RuntimeError::InvalidSetting {
            name: TEXTURE_OPERANDS_VAR,
            value,
            expected: "auto, on or off",
        }),
    }
}
