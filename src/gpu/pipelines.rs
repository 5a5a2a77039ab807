//! Per-device cache of shader modules, bind group layouts and compute pipelines, so
//! every kernel is compiled once per device and tiling, however many users ask.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::Gpu;
use crate::{Error, Result};

/// A WGSL program: a name and the source files it is made of, concatenated in order
/// (the family's base file, a `_subgroup.wgsl` file extending it, and a
/// `storage_*.wgsl` part choosing the storage type).
#[derive(Clone, Copy, Debug)]
pub struct ShaderProgram {
    /// Name, used as the shader module's label.
    pub name: &'static str,
    /// `(file name, source)` of each part, in order.
    pub parts: &'static [(&'static str, &'static str)],
    /// The program uses subgroup operations; only built where
    /// [`Capabilities::subgroups`](super::Capabilities::subgroups) holds.
    pub needs_subgroups: bool,
    /// The program stores f16 (`enable f16;`); only built where
    /// [`Capabilities::f16`](super::Capabilities::f16) holds.
    pub needs_f16: bool,
}

impl ShaderProgram {
    /// The WGSL source.
    pub fn text(&self) -> String {
        self.parts.iter().map(|(_, text)| *text).collect()
    }
}

/// How a kernel binds one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BindingKind {
    Uniform,
    Read,
    ReadWrite,
}

type LayoutKey = Vec<(u32, BindingKind)>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    source: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<LayoutKey, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    compiled: Mutex<Vec<CompiledPipeline>>,
}

/// One pipeline compilation: what was built and how long the driver took.
#[derive(Clone, Debug)]
pub struct CompiledPipeline {
    /// `program::entry` and its override constants.
    pub name: String,
    /// Host time spent creating the pipeline (the driver's compile).
    pub time: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gpu {
    fn shader_module(&self, source: &ShaderProgram) -> Result<wgpu::ShaderModule> {
        if let Some(m) = lock(&self.pipelines().modules).get(source.name) {
            return Ok(m.clone());
        }
        if source.needs_subgroups && !self.capabilities().subgroups {
            return Err(Error::MissingFeature {
                what: format!("shader `{}`", source.name),
                feature: "SUBGROUP (with subgroup size >= 8)".into(),
                adapter: self.adapter().name.clone(),
            });
        }
        if source.needs_f16 && !self.capabilities().f16 {
            return Err(Error::MissingFeature {
                what: format!("shader `{}`", source.name),
                feature: "SHADER_F16".into(),
                adapter: self.adapter().name.clone(),
            });
        }
        let text = source.text();
        let module = self.scoped(&format!("compiling shader `{}`", source.name), || {
            self.device()
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(source.name),
                    source: wgpu::ShaderSource::Wgsl(text.into()),
                })
        })?;
        lock(&self.pipelines().modules).insert(source.name, module.clone());
        Ok(module)
    }

    /// The bind group layout (and a pipeline layout with it as group 0) for these
    /// bindings, shared by every pipeline with the same bindings.
    pub(crate) fn layout(
        &self,
        bindings: &[(u32, BindingKind)],
    ) -> Result<(wgpu::BindGroupLayout, wgpu::PipelineLayout)> {
        if let Some(l) = lock(&self.pipelines().layouts).get(bindings) {
            return Ok(l.clone());
        }
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match kind {
                        BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
                        BindingKind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        BindingKind::ReadWrite => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let pair = self.scoped("creating a bind group layout", || {
            let bgl = self
                .device()
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("mmoe-wgpu kernel"),
                    entries: &entries,
                });
            let pl = self
                .device()
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("mmoe-wgpu kernel"),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
            (bgl, pl)
        })?;
        lock(&self.pipelines().layouts).insert(bindings.to_vec(), pair.clone());
        Ok(pair)
    }

    /// The compute pipeline for `entry` of `source` with these override constants,
    /// compiled on first use.
    pub(crate) fn pipeline(
        &self,
        source: &ShaderProgram,
        entry: &'static str,
        bindings: &[(u32, BindingKind)],
        constants: &[(&'static str, u32)],
    ) -> Result<wgpu::ComputePipeline> {
        let key = PipelineKey {
            source: source.name,
            entry,
            constants: constants.iter().map(|&(k, v)| (k, v as u64)).collect(),
        };
        if let Some(p) = lock(&self.pipelines().pipelines).get(&key) {
            return Ok(p.clone());
        }
        let module = self.shader_module(source)?;
        let (_, layout) = self.layout(bindings)?;
        let values: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let name = format!("{}::{entry} {constants:?}", source.name);
        let stopwatch = Stopwatch::start();
        let pipeline = self.scoped(&format!("building pipeline `{name}`"), || {
            self.device()
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &values,
                        // Kernels write every workgroup cell before reading it.
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })?;
        lock(&self.pipelines().compiled).push(CompiledPipeline {
            name,
            time: stopwatch.elapsed(),
        });
        lock(&self.pipelines().pipelines).insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Every pipeline compiled on this device so far, in order, with its compile time:
    /// where a cold start goes.
    pub fn compiled_pipelines(&self) -> Vec<CompiledPipeline> {
        lock(&self.pipelines().compiled).clone()
    }
}

/// Host time since a start, natively; always zero on the web, where
/// `std::time::Instant` does not exist (it panics in `wasm32-unknown-unknown`).
struct Stopwatch {
    #[cfg(not(target_arch = "wasm32"))]
    start: std::time::Instant,
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch {
            #[cfg(not(target_arch = "wasm32"))]
            start: std::time::Instant::now(),
        }
    }

    fn elapsed(&self) -> Duration {
        #[cfg(not(target_arch = "wasm32"))]
        return self.start.elapsed();
        #[cfg(target_arch = "wasm32")]
        Duration::ZERO
    }
}
