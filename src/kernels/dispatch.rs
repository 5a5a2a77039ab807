//! A checked, ready-to-record dispatch, and where dispatches are recorded.

use wgpu::util::DeviceExt;

use super::binding::BoundOperand;
use crate::gpu::bind_cache::{BindKey, CachedBindGroup};
use crate::gpu::{BindingKind, Gpu, ShaderProgram};
use crate::{Error, Result};

/// One kernel launch with its pipeline and bind group built: record it into any
/// number of passes. It keeps its buffers alive; it does not check them again.
///
/// Pipelines are compiled once per device; bind groups are cached per device by
/// binding set, so building a `Dispatch` again over the same buffers, offsets and
/// shape returns the same bind group (see [`Gpu::clear_bind_group_cache`]).
#[derive(Clone, Debug)]
pub struct Dispatch {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    /// Buffers the kernel made for this dispatch: the parameter uniform, tables, and
    /// any buffer given as [`Extra::Buffer`].
    _owned: Vec<wgpu::Buffer>,
}

/// A binding a kernel supplies itself, next to the caller's operands.
pub(crate) enum Extra<'a> {
    /// A small read-only storage table made from these bytes (cached by contents).
    Table(&'a [u8]),
    /// A buffer the kernel made and rewrites between submits (a per-step uniform):
    /// the dispatch is then never shared through the bind group cache.
    Buffer(&'a wgpu::Buffer),
}

impl Extra<'_> {
    fn kind(&self) -> BindingKind {
        match self {
            Extra::Table(_) => BindingKind::Read,
            Extra::Buffer(_) => BindingKind::Uniform,
        }
    }
}

/// The bindings of a dispatch over `operands` and `extras`, in slot order: the
/// parameter uniform at slot 0, then each operand and extra at its slot as its kind.
fn bindings_of(
    operands: &[BoundOperand<'_>],
    extras: &[(u32, Extra<'_>)],
) -> Vec<(u32, BindingKind)> {
    let mut bindings = vec![(0, BindingKind::Uniform)];
    bindings.extend(operands.iter().map(|op| (op.slot, op.kind)));
    bindings.extend(extras.iter().map(|(slot, extra)| (*slot, extra.kind())));
    bindings.sort_by_key(|&(slot, _)| slot);
    bindings
}

/// A compute entry point to launch: its program (at the call's precision), name,
/// bindings and override constants.
pub(crate) struct Kernel<'a> {
    pub program: &'static ShaderProgram,
    pub entry: &'static str,
    pub bindings: &'a [(u32, BindingKind)],
    pub constants: &'a [(&'static str, u32)],
}

impl Dispatch {
    /// Compiles `kernel`'s pipeline (or finds it in the device's cache), then builds
    /// (or finds) the uniform block `params` and the bind group over `operands` and
    /// the buffers the kernel supplies itself at the slots of `extras`.
    pub(crate) fn new(
        gpu: &Gpu,
        label: &'static str,
        kernel: Kernel<'_>,
        params: &[u8],
        (operands, extras): (&[BoundOperand<'_>], &[(u32, Extra<'_>)]),
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let max = gpu.limits().max_compute_workgroups_per_dimension;
        for (axis, &n) in ["x", "y", "z"].iter().zip(&workgroups) {
            if n > max {
                return Err(Error::Limit {
                    context: label.into(),
                    what: format!("workgroup count along {axis}"),
                    value: n as u64,
                    limit: max as u64,
                });
            }
        }
        let pipeline = gpu.pipeline(
            kernel.program,
            kernel.entry,
            kernel.bindings,
            kernel.constants,
        )?;
        let (layout, _) = gpu.layout(kernel.bindings)?;
        let make = || create_bind_group(gpu, label, &layout, params, operands, extras);
        let shareable = extras.iter().all(|(_, e)| matches!(e, Extra::Table(_)));
        let made = if shareable {
            let key = BindKey {
                layout: layout.clone(),
                params: params.to_vec(),
                operands: operands
                    .iter()
                    .map(|op| (op.slot, op.buffer.clone(), op.bind_offset, op.bind_size))
                    .collect(),
                tables: extras
                    .iter()
                    .filter_map(|(slot, e)| match e {
                        Extra::Table(bytes) => Some((*slot, bytes.to_vec())),
                        Extra::Buffer(_) => None,
                    })
                    .collect(),
            };
            gpu.cached_bind_group(key, make)?
        } else {
            make()?
        };
        Ok(Dispatch {
            label,
            pipeline,
            bind_group: made.bind_group,
            workgroups,
            _owned: made.owned,
        })
    }

    /// [`Dispatch::new`] of `entry` in `program` with the override `constants`, the
    /// uniform block `params`, and the layout `operands` and `extras` make.
    pub(crate) fn launch(
        gpu: &Gpu,
        label: &'static str,
        (program, entry, constants): (&'static ShaderProgram, &'static str, &[(&'static str, u32)]),
        params: &impl bytemuck::Pod,
        (operands, extras): (&[BoundOperand<'_>], &[(u32, Extra<'_>)]),
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let kernel = Kernel {
            program,
            entry,
            bindings: &bindings_of(operands, extras),
            constants,
        };
        let params = bytemuck::bytes_of(params);
        Dispatch::new(gpu, label, kernel, params, (operands, extras), workgroups)
    }

    /// Records the dispatch into an open compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// Records the dispatch in a compute pass of its own.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.label),
            timestamp_writes: None,
        });
        self.record(&mut pass);
    }

    /// The kernel's name.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// Workgroups launched along x, y and z.
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }

    /// The compute pipeline, shared by every dispatch of the same kernel, tiling and
    /// precision on the device.
    pub fn pipeline(&self) -> &wgpu::ComputePipeline {
        &self.pipeline
    }

    /// The bind group (group 0), shared by every dispatch over the same binding set.
    pub fn bind_group(&self) -> &wgpu::BindGroup {
        &self.bind_group
    }
}

fn create_bind_group(
    gpu: &Gpu,
    label: &'static str,
    layout: &wgpu::BindGroupLayout,
    params: &[u8],
    operands: &[BoundOperand<'_>],
    extras: &[(u32, Extra<'_>)],
) -> Result<CachedBindGroup> {
    gpu.scoped(&format!("binding `{label}`"), || {
        let device = gpu.device();
        let init = |contents: &[u8], usage| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
        };
        let mut owned = vec![init(params, wgpu::BufferUsages::UNIFORM)];
        let mut slots = vec![0];
        for (slot, extra) in extras {
            owned.push(match extra {
                Extra::Table(bytes) => init(bytes, wgpu::BufferUsages::STORAGE),
                Extra::Buffer(buffer) => (*buffer).clone(),
            });
            slots.push(*slot);
        }
        let mut entries: Vec<wgpu::BindGroupEntry<'_>> = slots
            .iter()
            .zip(&owned)
            .map(|(&binding, buffer)| wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        entries.extend(operands.iter().map(|op| wgpu::BindGroupEntry {
            binding: op.slot,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: op.buffer,
                offset: op.bind_offset,
                size: wgpu::BufferSize::new(op.bind_size),
            }),
        }));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        });
        CachedBindGroup { bind_group, owned }
    })
}

/// Where a kernel's `encode*` methods record: a [`wgpu::CommandEncoder`] (each
/// dispatch in a compute pass of its own) or a [`wgpu::ComputePass`] the caller has
/// open (the dispatches join it, next to the caller's own; wgpu orders the
/// dispatches of a pass as recorded and makes each see the writes of those before).
pub trait Recorder {
    /// Records `dispatch`.
    fn record_dispatch(&mut self, dispatch: &Dispatch);
}

impl Recorder for wgpu::CommandEncoder {
    fn record_dispatch(&mut self, dispatch: &Dispatch) {
        dispatch.encode(self);
    }
}

impl Recorder for wgpu::ComputePass<'_> {
    fn record_dispatch(&mut self, dispatch: &Dispatch) {
        dispatch.record(self);
    }
}

/// What a pass's checked call returns, and its `encode_*` records: one dispatch, or
/// several to record in order.
pub(crate) trait Dispatches {
    /// Records every dispatch into `target`, in order.
    fn record_into(&self, target: &mut impl Recorder);
}

impl Dispatches for Dispatch {
    fn record_into(&self, target: &mut impl Recorder) {
        target.record_dispatch(self);
    }
}

impl Dispatches for Vec<Dispatch> {
    fn record_into(&self, target: &mut impl Recorder) {
        for dispatch in self {
            target.record_dispatch(dispatch);
        }
    }
}

/// Writes a family's `encode_<pass>` methods, each the pass's checked call recorded
/// into a [`Recorder`], so that every pass has its encoder and all encoders behave
/// alike.
macro_rules! encoders {
    ($($encode:ident => $pass:ident($($arg:ident: $ty:ty),+);)+) => {$(
        #[doc = concat!(
            "Checks, binds and records [`", stringify!($pass), "`](Self::",
            stringify!($pass), ") into `target`: a [`wgpu::CommandEncoder`] or an open ",
            "[`wgpu::ComputePass`]. Nothing is recorded when a check fails."
        )]
        pub fn $encode(
            &self,
            target: &mut impl $crate::kernels::Recorder,
            $($arg: $ty),+
        ) -> $crate::Result<()> {
            $crate::kernels::dispatch::Dispatches::record_into(&self.$pass($($arg),+)?, target);
            Ok(())
        }
    )+};
}
pub(crate) use encoders;

/// Declares a family type over one device whose kernels run a tunable number of
/// invocations per workgroup, with `new` (at the module's `DEFAULT_WORKGROUP_SIZE`),
/// `with_workgroup_size` (checked by [`check_workgroup_size`] with `$bytes` of
/// workgroup memory per invocation) and `workgroup_size`. `$per` names what one
/// workgroup serves and `$effect` says what the size changes, both for the docs.
macro_rules! sized_family {
    (
        $(#[$meta:meta])*
        pub struct $family:ident($name:literal, per $per:literal, bytes $bytes:expr);
        $effect:literal
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $family {
            gpu: $crate::Gpu,
            workgroup_size: u32,
        }

        impl $family {
            #[doc = concat!(
                "On `gpu`, with [`DEFAULT_WORKGROUP_SIZE`] invocations per ", $per, "."
            )]
            pub fn new(gpu: &$crate::Gpu) -> Self {
                $family {
                    gpu: gpu.clone(),
                    workgroup_size: DEFAULT_WORKGROUP_SIZE,
                }
            }

            #[doc = concat!(
                "With `workgroup_size` invocations per ", $per, ": a power of two within ",
                "the device's limits. ", $effect
            )]
            pub fn with_workgroup_size(
                gpu: &$crate::Gpu,
                workgroup_size: u32,
            ) -> $crate::Result<Self> {
                use $crate::kernels::dispatch::check_workgroup_size;
                check_workgroup_size(gpu, $name, workgroup_size, $bytes)?;
                Ok($family {
                    gpu: gpu.clone(),
                    workgroup_size,
                })
            }

            #[doc = concat!("Invocations per ", $per, ".")]
            pub fn workgroup_size(&self) -> u32 {
                self.workgroup_size
            }
        }
    };
}
pub(crate) use sized_family;

/// Checks a tree-reduction kernel's `workgroup_size`: a power of two within the
/// device's invocation limits and with `bytes_per_invocation` of workgroup memory each;
/// `kernel` names it in the error.
pub(crate) fn check_workgroup_size(
    gpu: &Gpu,
    kernel: &str,
    workgroup_size: u32,
    bytes_per_invocation: u32,
) -> Result<()> {
    let limits = gpu.limits();
    let max = limits
        .max_compute_invocations_per_workgroup
        .min(limits.max_compute_workgroup_size_x)
        .min(limits.max_compute_workgroup_storage_size / bytes_per_invocation);
    if !workgroup_size.is_power_of_two() || workgroup_size > max {
        return Err(Error::invalid(
            format!("{kernel} workgroup size"),
            format!("{workgroup_size} is not a power of two between 1 and {max}"),
        ));
    }
    Ok(())
}

/// Loop iterations one invocation may run, all its loops together: llvmpipe (Mesa's
/// lavapipe) counts them down from this in one counter per invocation and, once it
/// is spent, ends every loop after its current pass, silently. Each entry into a loop
/// costs its iterations plus up to two.
pub const LOOP_BUDGET: u64 = 65_535;

/// An [`Error::Limit`] when the busiest invocation of `kernel` would run more than
/// [`LOOP_BUDGET`] loop iterations; `remedy` says what needs fewer.
pub(crate) fn check_loop_budget(kernel: &str, iterations: u64, remedy: &str) -> Result<()> {
    if iterations <= LOOP_BUDGET {
        return Ok(());
    }
    Err(Error::Limit {
        context: kernel.into(),
        what: format!("the loop iterations of one invocation ({remedy})"),
        value: iterations,
        limit: LOOP_BUDGET,
    })
}
