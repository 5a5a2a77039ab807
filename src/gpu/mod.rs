//! The device layer: adapter selection, device limits and features, error capture,
//! buffers and the per-device cache of compiled pipelines.
//!
//! A [`Gpu`] is a cheap-to-clone handle. Make one with `Gpu::new` (picks an adapter,
//! honouring wgpu's `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`
//! environment variables) or wrap a device the application already has with
//! [`Gpu::from_device`].
//!
//! # On the web
//!
//! With the `webgpu` feature the crate builds for `wasm32-unknown-unknown` on wgpu's
//! WebGPU backend. A browser answers the device only from its event loop, so nothing
//! there may wait: open the device with [`Gpu::new_async`] (or bring your own with
//! [`Gpu::from_device`]), read results with [`Gpu::read_async`] and wait with
//! [`Gpu::wait_async`]. Recording kernels never waits, so the whole kernel backend
//! works as on native. What waits is native-only and returns [`Error::Blocking`]
//! on the web: `Gpu::read`, `Gpu::wait`, `Gpu::time_pass`, and what is built on
//! them (the model layer's read-backs and profiling). Tuning is off there (each kernel
//! uses its default tiling: on an adapter without subgroups, the workgroup-memory
//! tiles), and device errors surface at the next call through [`Gpu::check`]
//! instead of at the call that caused them (error scopes also resolve only in the
//! event loop).

pub(crate) mod bind_cache;
pub use bind_cache::BIND_GROUP_CACHE_CAPACITY;
mod buffers;
pub use buffers::STORAGE_USAGE;
mod pipelines;
mod report;
mod scope;
mod signal;
mod timing;
mod tuning;

pub use report::{AdapterReport, DeviceReport};
pub use timing::{TimeSource, Timing};
pub(crate) use tuning::TuneTable;
pub use tuning::{TUNE_CACHE_ENV, TUNE_ENV, TuneMode, TuneRecord, TuneSource};

use std::fmt;
use std::sync::{Arc, Mutex};

pub(crate) use pipelines::{BindingKind, PipelineCache};
pub use pipelines::{CompiledPipeline, ShaderProgram};

use crate::{Error, Result};

/// Which adapter to open. [`GpuOptions::from_env`] reads wgpu's own variables.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider; `None` means Vulkan, Metal and DX12.
    pub backends: Option<wgpu::Backends>,
    /// Pick the first adapter whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Preference between integrated and discrete GPUs when no name is given.
    pub power_preference: wgpu::PowerPreference,
    /// How kernels choose their tiling ([`TUNE_ENV`]).
    pub tune: TuneMode,
    /// Where tuning choices persist between processes ([`TUNE_CACHE_ENV`]; by
    /// default `mmoe-wgpu/tuning.tsv` in the user's cache directory); `None` keeps
    /// them in memory.
    pub tune_cache: Option<std::path::PathBuf>,
    /// Optional features ([`Capabilities`]) not to enable even where the adapter has
    /// them ([`WITHHOLD_ENV`]), e.g. `SUBGROUP` to run, test and time the kernels as
    /// on an adapter without subgroups (WebGPU in a browser, DX12 through FXC).
    pub withheld_features: wgpu::Features,
}

/// Environment variable naming optional features the device is opened without,
/// separated by commas or spaces: `SUBGROUP`, `SHADER_F16`, `TIMESTAMP_QUERY`.
pub const WITHHOLD_ENV: &str = "MMOE_WGPU_WITHHOLD";

/// The optional features named in `list` (see [`WITHHOLD_ENV`]); unknown names are
/// ignored.
fn features_named(list: &str) -> wgpu::Features {
    list.split([',', ' '])
        .map(|name| match name.trim().to_ascii_uppercase().as_str() {
            "SUBGROUP" => wgpu::Features::SUBGROUP,
            "SHADER_F16" => wgpu::Features::SHADER_F16,
            "TIMESTAMP_QUERY" => wgpu::Features::TIMESTAMP_QUERY,
            _ => wgpu::Features::empty(),
        })
        .fold(wgpu::Features::empty(), |all, f| all | f)
}

impl GpuOptions {
    /// Options from `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`,
    /// [`TUNE_ENV`], [`TUNE_CACHE_ENV`] and [`WITHHOLD_ENV`]. Without
    /// `WGPU_POWER_PREF` the high-performance adapter is preferred.
    pub fn from_env() -> Self {
        GpuOptions {
            backends: wgpu::Backends::from_env(),
            adapter_name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            tune: TuneMode::from_env(),
            tune_cache: tuning::cache_path_from_env(),
            withheld_features: std::env::var(WITHHOLD_ENV)
                .map(|v| features_named(&v))
                .unwrap_or_else(|_| wgpu::Features::empty()),
        }
    }
}

/// Optional features the kernels can use, as enabled on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// GPU timestamps (`TIMESTAMP_QUERY`), used for kernel timing.
    pub timestamps: bool,
    /// f16 arithmetic and storage in shaders (`SHADER_F16`).
    pub f16: bool,
    /// Subgroup operations (`SUBGROUP`) with a subgroup size of at least 8, which the
    /// broadcast GEMM tilings need.
    pub subgroups: bool,
}

/// A wgpu device and queue with the crate's caches. Clone it freely.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

struct GpuInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    report: AdapterReport,
    caps: Capabilities,
    withheld: wgpu::Features,
    limits: wgpu::Limits,
    /// Errors wgpu could not hand to an error scope; only set on devices we created.
    uncaptured: Arc<Mutex<Option<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    pipelines: PipelineCache,
    bind_groups: bind_cache::BindGroupCache,
    tuning: TuneTable,
}

/// The features the crate asks for when the adapter has them, less `withheld` (timestamps
/// inside encoders go with timestamps).
fn wanted_features(withheld: wgpu::Features) -> wgpu::Features {
    (wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP)
        - with_dependents(withheld)
}

/// `withheld` and the features that need one of them.
fn with_dependents(withheld: wgpu::Features) -> wgpu::Features {
    if withheld.contains(wgpu::Features::TIMESTAMP_QUERY) {
        withheld | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
    } else {
        withheld
    }
}

fn capabilities(features: wgpu::Features, report: &AdapterReport) -> Capabilities {
    Capabilities {
        timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        f16: features.contains(wgpu::Features::SHADER_F16),
        subgroups: features.contains(wgpu::Features::SUBGROUP) && report.subgroup_min_size >= 8,
    }
}

impl Gpu {
    /// Open the adapter chosen by [`GpuOptions::from_env`], waiting for it (native
    /// only; on the web, [`Gpu::new_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Gpu> {
        Gpu::with_options(&GpuOptions::from_env())
    }

    /// Open an adapter chosen by `options`, with the adapter's own limits (not the
    /// WebGPU defaults) and the optional features the crate can use, waiting for it
    /// (native only; on the web, [`Gpu::with_options_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(options: &GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::with_options_async(options))
    }

    /// `Gpu::new` without waiting: on the web, the way to open a device.
    pub async fn new_async() -> Result<Gpu> {
        Gpu::with_options_async(&GpuOptions::from_env()).await
    }

    /// `Gpu::with_options` without waiting: on the web, the way to open a device.
    pub async fn with_options_async(options: &GpuOptions) -> Result<Gpu> {
        let backends = options.backends.unwrap_or(wgpu::Backends::PRIMARY);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = pick_adapter(&instance, backends, options).await?;
        Gpu::with_adapter_async(adapter, options).await
    }

    /// Opens `adapter` (one of [`wgpu::Instance::enumerate_adapters`], e.g. picked by
    /// position when several identical GPUs share a name) as
    /// [`with_options`](Self::with_options) opens the adapter it picks; `options`'
    /// backends and adapter name are not consulted (native only; on the web,
    /// [`Gpu::with_adapter_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_adapter(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::with_adapter_async(adapter, options))
    }

    /// `Gpu::with_adapter` without waiting.
    pub async fn with_adapter_async(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu> {
        let info = adapter.get_info();
        let report = AdapterReport::from_info(&info);
        let features = wanted_features(options.withheld_features) & adapter.features();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("mmoe-wgpu"),
                required_features: features,
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: report.name.clone(),
                message: e.to_string(),
            })?;
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        Ok(Gpu::assemble(device, queue, report, uncaptured, options))
    }

    /// Use a device the application already created. The crate uses whatever optional
    /// features ([`Capabilities`]) that device has enabled; it does not replace the
    /// application's uncaptured-error handler, and captures its own errors with error
    /// scopes. Tuning follows [`GpuOptions::from_env`].
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        let report = AdapterReport::from_info(&device.adapter_info());
        let options = GpuOptions::from_env();
        Gpu::assemble(device, queue, report, Arc::new(Mutex::new(None)), &options)
    }

    // On the web wgpu's handles are neither Send nor Sync (a page has one thread to
    // talk to the device from), and the Arc only shares a Gpu within that thread.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        report: AdapterReport,
        uncaptured: Arc<Mutex<Option<String>>>,
        options: &GpuOptions,
    ) -> Gpu {
        let withheld = with_dependents(options.withheld_features);
        let caps = capabilities(device.features() - withheld, &report);
        let limits = device.limits();
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = lost_sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("{reason:?}: {message}"));
        });
        let tuning = TuneTable::new(options.tune, options.tune_cache.clone(), &report);
        Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                caps,
                withheld,
                limits,
                uncaptured,
                lost,
                pipelines: PipelineCache::default(),
                bind_groups: Default::default(),
                tuning,
                report,
            }),
        }
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Name, backend and driver of the adapter.
    pub fn adapter(&self) -> &AdapterReport {
        &self.inner.report
    }

    /// Optional features in use.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Optional features the kernels do not use here, even where the device has them
    /// ([`GpuOptions::withheld_features`]).
    pub fn withheld_features(&self) -> wgpu::Features {
        self.inner.withheld
    }

    pub(crate) fn pipelines(&self) -> &PipelineCache {
        &self.inner.pipelines
    }

    pub(crate) fn tuning(&self) -> &TuneTable {
        &self.inner.tuning
    }

    /// Returns the first error the device reported outside an error scope, or its
    /// loss, since the last call. Every public entry point that talks to the device
    /// calls this, so an asynchronous failure surfaces as an `Err` from the next call.
    pub fn check(&self) -> Result<()> {
        if let Some(msg) = self
            .inner
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(Error::DeviceLost(msg));
        }
        let pending = self
            .inner
            .uncaptured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match pending {
            Some(message) => Err(Error::Gpu {
                during: "earlier GPU work".into(),
                message,
            }),
            None => Ok(()),
        }
    }

    /// Block until all submitted work is done (native only: on the web it is
    /// [`Error::Blocking`]; use [`Gpu::wait_async`]).
    pub fn wait(&self) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        return Err(Error::blocking("Gpu::wait", "await Gpu::wait_async"));
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.poll_until_idle()?;
            self.check()
        }
    }

    /// Until all work submitted so far is done, without blocking the thread: on the
    /// web, the way to wait for the device.
    pub async fn wait_async(&self) -> Result<()> {
        let (done, finished) = signal::channel();
        self.queue().on_submitted_work_done(move || done.send(()));
        self.poll_until_idle()?;
        finished.await.ok_or_else(|| Error::Gpu {
            during: "waiting for the queue".into(),
            message: "the queue dropped its completion callback".into(),
        })?;
        self.check()
    }

    /// Natively, runs the device until its queue is empty, which also runs pending
    /// callbacks; on the web the browser does both, and this does nothing.
    fn poll_until_idle(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                during: "waiting for the queue".into(),
                message: e.to_string(),
            })?;
        Ok(())
    }
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.inner.report)
            .field("capabilities", &self.inner.caps)
            .finish()
    }
}

async fn pick_adapter(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    options: &GpuOptions,
) -> Result<wgpu::Adapter> {
    let backends_note = if options.backends.is_some() {
        format!(" for WGPU_BACKEND={backends:?}")
    } else {
        String::new()
    };
    if let Some(wanted) = &options.adapter_name {
        let adapters = instance.enumerate_adapters(backends).await;
        let needle = wanted.to_lowercase();
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&needle))
            .ok_or_else(|| Error::NoAdapter {
                detail: format!(
                    " whose name contains WGPU_ADAPTER_NAME=`{wanted}`{backends_note} (adapters present: {names:?})"
                ),
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: options.power_preference,
            force_fallback_adapter: false,
            compatible_surface: None,
            // Limit buckets hide the real limits; the kernels want them.
            apply_limit_buckets: false,
        })
        .await
        .map_err(|e| Error::NoAdapter {
            detail: format!("{backends_note} ({e})"),
        })
}
