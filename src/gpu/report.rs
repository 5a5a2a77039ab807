//! What a device is: the adapter, its driver, the optional features and limits the
//! kernels depend on, and how kernels are timed and tuned on it. Benchmarks print it
//! so that a run on any machine says what ran.

use std::fmt;

use super::{Capabilities, Gpu, TimeSource, TuneMode};

/// What the crate knows about the adapter it runs on.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Graphics API in use.
    pub backend: wgpu::Backend,
    /// Driver name.
    pub driver: String,
    /// Driver version information.
    pub driver_info: String,
    /// Integrated, discrete, CPU, ...
    pub device_type: wgpu::DeviceType,
    /// Smallest subgroup size the adapter may use (0 when unknown).
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use (0 when unknown).
    pub subgroup_max_size: u32,
}

impl AdapterReport {
    pub(super) fn from_info(info: &wgpu::AdapterInfo) -> Self {
        AdapterReport {
            name: info.name.clone(),
            backend: info.backend,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            device_type: info.device_type,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
        }
    }
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?}", self.name, self.backend)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        if !self.driver_info.is_empty() {
            write!(f, " {}", self.driver_info)?;
        }
        write!(f, ")")
    }
}

/// The optional wgpu features the crate uses, with their names.
pub(super) const OPTIONAL_FEATURES: [(wgpu::Features, &str); 4] = [
    (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
    (
        wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
        "TIMESTAMP_QUERY_INSIDE_ENCODERS",
    ),
    (wgpu::Features::SHADER_F16, "SHADER_F16"),
    (wgpu::Features::SUBGROUP, "SUBGROUP"),
];

/// Everything about a device that decides which kernels run and how fast: see
/// [`Gpu::report`]. `Display` writes it over a few lines.
#[derive(Clone, Debug)]
pub struct DeviceReport {
    /// The adapter and its driver.
    pub adapter: AdapterReport,
    /// The optional features the crate uses that the device has enabled.
    pub features: Vec<&'static str>,
    /// The optional features withheld ([`GpuOptions::withheld_features`](super::GpuOptions::withheld_features)).
    pub withheld: Vec<&'static str>,
    /// What the kernels make of the features.
    pub capabilities: Capabilities,
    /// The device's limits.
    pub limits: wgpu::Limits,
    /// How kernels are timed.
    pub time_source: TimeSource,
    /// How kernels choose their tilings.
    pub tune_mode: TuneMode,
}

impl fmt::Display for DeviceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.adapter;
        writeln!(f, "adapter: {a}")?;
        write!(f, "  type {:?}, subgroup sizes ", a.device_type)?;
        if a.subgroup_max_size == 0 {
            writeln!(f, "unknown")?;
        } else {
            writeln!(f, "{}..={}", a.subgroup_min_size, a.subgroup_max_size)?;
        }
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(f, "  features: {}", list(&self.features))?;
        if !self.withheld.is_empty() {
            write!(f, " (withheld: {})", list(&self.withheld))?;
        }
        writeln!(f)?;
        let l = &self.limits;
        writeln!(
            f,
            "  limits: {} invocations per workgroup ({} along x), {} bytes of workgroup memory, \
             storage bindings of {} bytes, buffers of {} bytes",
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_size_x,
            l.max_compute_workgroup_storage_size,
            l.max_storage_buffer_binding_size,
            l.max_buffer_size,
        )?;
        let c = &self.capabilities;
        write!(
            f,
            "  kernels: GEMM register tiles share rows by {}; f16 storage {}; timing by {}; tuning {:?}",
            if c.subgroups {
                "subgroup broadcast (workgroup memory too)"
            } else {
                "workgroup memory"
            },
            if c.f16 { "available" } else { "unavailable" },
            self.time_source,
            self.tune_mode,
        )
    }
}

impl Gpu {
    /// The device report: adapter, driver, optional features, limits, subgroup sizes,
    /// and how kernels are timed and tuned here.
    pub fn report(&self) -> DeviceReport {
        let names = |set: wgpu::Features| {
            OPTIONAL_FEATURES
                .iter()
                .filter(|(f, _)| set.contains(*f))
                .map(|(_, name)| *name)
                .collect()
        };
        DeviceReport {
            adapter: self.adapter().clone(),
            features: names(self.device().features() - self.withheld_features()),
            withheld: names(self.withheld_features()),
            capabilities: self.capabilities(),
            limits: self.limits().clone(),
            time_source: self.time_source(),
            tune_mode: self.tune_mode(),
        }
    }
}
