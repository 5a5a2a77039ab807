//! One optimizer step (SGD with momentum, Adam, AdamW) over one flat parameter
//! buffer, in one dispatch.
//!
//! [`Optimizer::update`] checks and binds the buffers once and returns an
//! [`OptimizerStep`] ([`Optimizer::encode_update`] also records it); before each submit, [`OptimizerStep::set_step`] writes the step
//! number, the learning rate and the bias corrections into a small uniform the step
//! owns. Changing the learning rate therefore never recompiles or rebinds anything.
//!
//! # Non-finite-loss guard
//!
//! When [`OptimizerUpdate::loss`] and [`OptimizerUpdate::status`] are given, the step
//! first looks at the `T` loss values (every invocation reads them):
//! - if any is NaN or infinite, the whole update is skipped (params and moments are
//!   left untouched) and, if `status[0] == 0`, `status[0]` is set to the step number
//!   and `status[1..=T]` to the loss values' bits (`f32::to_bits`);
//! - once `status[0] != 0`, every later step is skipped as well, whatever its loss.
//!
//! A trainer zeroes `status` once, records steps without reading anything back, and
//! reads `status` whenever it likes: a non-zero `status[0]` is the first step whose
//! loss was non-finite (see [`Error::NonFiniteLoss`]), and the parameters are those
//! from just before it.
//!
//! # Precision
//!
//! Parameters and moments are always f32: these are the master weights, and an f16
//! parameter could not take the many updates smaller than 2^-11 of its size (the
//! usual mixed-precision practice). [`OptimizerUpdate::precision`] sets the type of the
//! gradients (f16 from f16 backward kernels) and of the optional
//! [`params_copy`](OptimizerUpdate::params_copy), the updated parameters rounded to
//! f16 in the same pass for f16 forward kernels to read.
//!
//! # Speed
//!
//! The update is a pure streaming pass (Adam reads 4 and writes 3 floats per
//! parameter), so what it costs is how it moves memory. Each invocation updates units
//! of four consecutive elements with vec4 arithmetic, several units in a grid-stride
//! loop (few workgroups: on lavapipe each one has a fixed start-up cost). Where every
//! operand starts at a multiple of four elements from its binding's start and its
//! buffer holds the operand rounded up to whole units (the trainer's flat parameter
//! buffers are padded so), the **vec4 kernels** move a unit with one load or store;
//! otherwise the **scalar kernels** move each element on its own
//! ([`OptimizerStep::vectorized`] says which). Lanes past an operand's end are read
//! (inside the buffer) and never written. The arithmetic per element is the same
//! either way, and the same as one element per invocation: the results are bitwise
//! identical whichever kernel runs. On lavapipe the vec4 kernels ran the census
//! model's Adam step (0.28 M parameters) 5× faster than one element per invocation.
//!
//! Shader: `shaders/optimizer.wgsl` with a lanes part (`shaders/optimizer_vec4.wgsl`
//! or `shaders/optimizer_scalar.wgsl`) and the storage part (`shaders/storage_*.wgsl`)
//! of the call's [`Precision`].
//!
//! # Example
//!
//! ```
//! use mmoe_wgpu::kernels::optimizer::{OptimizerConfig, OptimizerUpdate, Optimizer};
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = mmoe_wgpu::Gpu::new()?;
//! let params = gpu.upload("params", &[1.0f32, -2.0, 3.0])?;
//! let grads = gpu.upload("grads", &[0.5f32, 0.5, -1.0])?;
//! let m = gpu.storage_buffer("m", 4 * 3)?; // zero before the first step
//!
//! let step = Optimizer::new(&gpu).update(&OptimizerUpdate {
//!     config: OptimizerConfig::Sgd { momentum: 0.0 },
//!     len: 3,
//!     precision: Precision::F32,
//!     params: BufferView::new(&params),
//!     grads: BufferView::new(&grads),
//!     m: BufferView::new(&m),
//!     v: None,
//!     loss: None,
//!     status: None,
//!     tasks: 0,
//!     params_copy: None,
//! })?;
//! step.set_step(gpu.queue(), 1, 0.1); // step 1, learning rate 0.1
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! step.encode(&mut encoder);
//! gpu.queue().submit([encoder.finish()]);
//!
//! let updated: Vec<f32> = gpu.read(&params, 0, 3)?;
//! for (got, want) in updated.iter().zip([0.95, -2.05, 3.1]) {
//!     assert!((got - want).abs() < 1e-6); // p − 0.1·g
//! }
//! # Ok(())
//! # }
//! ```

use super::binding::BoundOperand;
use super::binding::{STORAGE_F16, STORAGE_F32, program_for};
use super::dispatch::Extra;
use super::{BufferView, Dispatch, Operand, Precision, Recorder, bind_operands, div_ceil};
use crate::gpu::{BindingKind, Gpu, ShaderProgram};
pub use crate::shape::OptimizerConfig;
use crate::{Error, Result};

/// The WGSL programs of this family: vec4 and scalar lanes, each with f32 and f16
/// gradients.
pub const PROGRAMS: &[ShaderProgram] = &[VEC4[0], VEC4[1], SCALAR[0], SCALAR[1]];

const SOURCE: (&str, &str) = (
    "optimizer.wgsl",
    include_str!("../../shaders/optimizer.wgsl"),
);
const VEC4_LANES: (&str, &str) = (
    "optimizer_vec4.wgsl",
    include_str!("../../shaders/optimizer_vec4.wgsl"),
);
const SCALAR_LANES: (&str, &str) = (
    "optimizer_scalar.wgsl",
    include_str!("../../shaders/optimizer_scalar.wgsl"),
);

/// The kernels moving each unit of four elements as one vec4, with f32 and f16
/// gradients: for operands at offsets of whole units in buffers that hold the last
/// unit whole.
const VEC4: [ShaderProgram; 2] = [
    ShaderProgram {
        name: "optimizer_vec4",
        parts: &[SOURCE, VEC4_LANES, STORAGE_F32],
        needs_subgroups: false,
        needs_f16: false,
    },
    ShaderProgram {
        name: "optimizer_vec4_f16",
        parts: &[STORAGE_F16, SOURCE, VEC4_LANES],
        needs_subgroups: false,
        needs_f16: true,
    },
];

/// The kernels moving each element on its own, for any operands.
const SCALAR: [ShaderProgram; 2] = [
    ShaderProgram {
        name: "optimizer_scalar",
        parts: &[SOURCE, SCALAR_LANES, STORAGE_F32],
        needs_subgroups: false,
        needs_f16: false,
    },
    ShaderProgram {
        name: "optimizer_scalar_f16",
        parts: &[STORAGE_F16, SOURCE, SCALAR_LANES],
        needs_subgroups: false,
        needs_f16: true,
    },
];

/// Elements each invocation updates (16 units of four, in a grid-stride loop) when
/// the parameters are many; the dispatch has `len / (workgroup size · this)`
/// workgroups, at most the device's limit per dimension. On lavapipe every workgroup
/// costs a fixed start-up: 64 elements per invocation ran the census update (0.28 M
/// parameters) about 2× faster than 4 per invocation, and a large model still gets
/// about a thousand workgroups.
pub const ELEMENTS_PER_INVOCATION: usize = 64;

use BindingKind::{Read, ReadWrite};
/// Slot of the per-step uniform.
const STEP_SLOT: u32 = 1;

const FLAG_GUARD: u32 = 1;
const FLAG_L2: u32 = 2;
const FLAG_DECOUPLED: u32 = 4;
const FLAG_COPY: u32 = 8;

/// The workgroup size [`Optimizer::new`] uses.
pub const DEFAULT_WORKGROUP_SIZE: u32 = 64;

/// Operands of an optimizer step over `len` elements.
#[derive(Clone, Copy, Debug)]
pub struct OptimizerUpdate<'a> {
    /// Update rule and hyperparameters.
    pub config: OptimizerConfig,
    /// Number of parameters.
    pub len: usize,
    /// Storage type of `grads` and `params_copy`; parameters and moments are f32.
    pub precision: Precision,
    /// Parameters (f32 master weights), updated in place.
    pub params: BufferView<'a>,
    /// Their gradients; a buffer distinct from every written operand's.
    pub grads: BufferView<'a>,
    /// First moment (Adam) or velocity (SGD), updated in place; zero before step 1.
    pub m: BufferView<'a>,
    /// Second moment, updated in place; required by Adam and AdamW, ignored by SGD.
    pub v: Option<BufferView<'a>>,
    /// Non-finite-loss guard (see the [module docs](self)): `T` f32 loss values of
    /// the step's forward pass. Given together with `status`.
    pub loss: Option<BufferView<'a>>,
    /// Guard status, `1 + T` u32 words, read and written; zero it before training.
    pub status: Option<BufferView<'a>>,
    /// `T`, the number of loss values the guard reads; ignored without a guard.
    pub tasks: usize,
    /// Also written with the updated parameters, in `precision`: the f16 working copy
    /// of the f32 master weights that f16 kernels read. Untouched by skipped steps.
    pub params_copy: Option<BufferView<'a>>,
}

crate::kernels::binding::host_struct! {
    /// Mirrors `OptParams` in the shader.
    struct OptParams {
        len: u32,
        flags: u32,
        tasks: u32,
        stride: u32,
        p_base: u32,
        g_base: u32,
        m_base: u32,
        v_base: u32,
        loss_base: u32,
        status_base: u32,
        copy_base: u32,
        _pad: [u32; 3],
        beta1: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
        eps: f32,
        decay_or_momentum: f32,
    }
}

crate::kernels::binding::host_struct! {
    /// Mirrors `StepParams` in the shader.
    struct StepParams {
        step: u32,
        lr: f32,
        inv_bc1: f32,
        inv_bc2: f32,
    }
}

/// A bound optimizer step: the [`Dispatch`] plus the uniform holding the per-step
/// values, which it owns. Record [`dispatch`](Self::dispatch) once per training step
/// and call [`set_step`](Self::set_step) before each submit.
#[derive(Clone, Debug)]
pub struct OptimizerStep {
    dispatch: Dispatch,
    uniform: wgpu::Buffer,
    config: OptimizerConfig,
    vectorized: bool,
}

impl OptimizerStep {
    /// Writes the step number `step` (1-based), the learning rate and the bias
    /// corrections `1 − β1^t`, `1 − β2^t` (computed in `f64`) into the step's uniform
    /// with `queue.write_buffer`. The write lands before the next submit on `queue`,
    /// so call it once between submits: every dispatch in one submit sees the last
    /// value written. `step == 0` (the value before the first call) makes the
    /// dispatch a no-op.
    pub fn set_step(&self, queue: &wgpu::Queue, step: u32, learning_rate: f32) {
        let (bc1, bc2) = self.config.bias_corrections(step.max(1));
        let params = StepParams {
            step,
            lr: learning_rate,
            inv_bc1: (1.0 / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
        };
        queue.write_buffer(&self.uniform, 0, bytemuck::bytes_of(&params));
    }

    /// The dispatch to record.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// The update rule and hyper-parameters it was bound with.
    pub fn config(&self) -> OptimizerConfig {
        self.config
    }

    /// Whether the step runs the vec4 kernels (see the [module docs](self#speed)):
    /// every operand's offset is a multiple of 16 bytes (8 for f16) from a binding
    /// boundary and every buffer holds the operand rounded up to whole units of four
    /// elements. Otherwise the scalar kernels run, slower, to the same bits.
    pub fn vectorized(&self) -> bool {
        self.vectorized
    }

    /// Records the step into `target`: a [`wgpu::CommandEncoder`] (in a compute pass
    /// of its own) or an open [`wgpu::ComputePass`].
    pub fn encode(&self, target: &mut impl Recorder) {
        target.record_dispatch(&self.dispatch);
    }
}

/// Slots of the operands the lanes part declares: params, grads, moment1, moment2,
/// params_copy.
const LANE_SLOTS: [u32; 5] = [2, 3, 4, 5, 8];

/// `operands` (already checked and `bound`) bound for the vec4 kernels, if they can
/// be: every lane operand starts at a whole unit of four elements in its binding,
/// and its buffer holds its last unit whole without overlapping another output.
fn bind_whole_units<'a>(
    gpu: &Gpu,
    operands: &[Operand<'a>],
    bound: &[BoundOperand<'a>],
) -> Option<Vec<BoundOperand<'a>>> {
    let aligned = bound
        .iter()
        .filter(|b| LANE_SLOTS.contains(&b.slot))
        .all(|b| b.base % 4 == 0);
    if !aligned {
        return None;
    }
    let whole: Vec<Operand<'a>> = operands
        .iter()
        .map(|op| {
            if LANE_SLOTS.contains(&op.slot) {
                Operand {
                    len: op.len.next_multiple_of(4),
                    ..*op
                }
            } else {
                *op
            }
        })
        .collect();
    bind_operands(gpu, "optimizer", &whole).ok()
}

/// The optimizer kernels on one device. Cheap to clone; pipelines are compiled on
/// first use and cached per device.
#[derive(Clone, Debug)]
pub struct Optimizer {
    gpu: Gpu,
    workgroup_size: u32,
}

impl Optimizer {
    /// The kernels on `gpu`, with [`DEFAULT_WORKGROUP_SIZE`] invocations per workgroup.
    pub fn new(gpu: &Gpu) -> Self {
        Optimizer {
            gpu: gpu.clone(),
            workgroup_size: DEFAULT_WORKGROUP_SIZE,
        }
    }

    /// The kernels with `workgroup_size` invocations per workgroup, within the
    /// device's limits. Results do not depend on it.
    pub fn with_workgroup_size(gpu: &Gpu, workgroup_size: u32) -> Result<Self> {
        let limits = gpu.limits();
        let max = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x);
        if workgroup_size == 0 || workgroup_size > max {
            return Err(Error::invalid(
                "optimizer workgroup size",
                format!("{workgroup_size} is not between 1 and {max}"),
            ));
        }
        Ok(Optimizer {
            gpu: gpu.clone(),
            workgroup_size,
        })
    }

    /// Invocations per workgroup.
    pub fn workgroup_size(&self) -> u32 {
        self.workgroup_size
    }

    /// Checks and binds one step. The returned step does nothing until
    /// [`OptimizerStep::set_step`] gives it a step number.
    pub fn update(&self, args: &OptimizerUpdate<'_>) -> Result<OptimizerStep> {
        const CTX: &str = "optimizer";
        let opt = args.config;
        opt.validate()?;
        args.precision.check(&self.gpu, CTX)?;
        let len = args.len;
        if len == 0 {
            return Err(Error::shape(CTX, "len", "at least 1 parameter", "0"));
        }
        if len >= u32::MAX as usize / 2 {
            return Err(Error::Limit {
                context: CTX.into(),
                what: "parameter count".into(),
                value: len as u64,
                limit: u32::MAX as u64 / 2,
            });
        }
        let params = Operand::new("params", 2, args.params, len, ReadWrite);
        let grads = Operand::new("grads", 3, args.grads, len, Read).of(args.precision);
        let m = Operand::new("m", 4, args.m, len, ReadWrite);
        let mut operands = vec![params, grads, m];
        let adam = opt.needs_second_moment();
        if adam {
            let v = args.v.ok_or_else(|| {
                Error::shape(
                    CTX,
                    "v",
                    format!("a second-moment buffer (needed by {opt:?})"),
                    "none",
                )
            })?;
            operands.push(Operand::new("v", 5, v, len, ReadWrite));
        }
        let guard = match (args.loss, args.status) {
            (Some(loss), Some(status)) => {
                if args.tasks == 0 {
                    return Err(Error::shape(
                        CTX,
                        "tasks",
                        "at least 1 loss value for the guard",
                        "0",
                    ));
                }
                if args.tasks >= u32::MAX as usize / 2 {
                    return Err(Error::Limit {
                        context: CTX.into(),
                        what: "guard loss count".into(),
                        value: args.tasks as u64,
                        limit: u32::MAX as u64 / 2,
                    });
                }
                operands.push(Operand::new("loss", 6, loss, args.tasks, Read));
                operands.push(Operand::new("status", 7, status, 1 + args.tasks, ReadWrite));
                true
            }
            (None, None) => {
                // The shader never reads these slots without FLAG_GUARD.
                operands.push(grads.stand_in(6));
                operands.push(params.stand_in(7));
                false
            }
            (Some(_), None) => {
                return Err(Error::shape(
                    CTX,
                    "status",
                    "a status buffer (the guard needs loss and status together)",
                    "none",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::shape(
                    CTX,
                    "loss",
                    "a loss buffer (the guard needs loss and status together)",
                    "none",
                ));
            }
        };
        // Without FLAG_COPY the shader never touches slot 8.
        operands.push(match args.params_copy {
            Some(copy) => Operand::new("params_copy", 8, copy, len, ReadWrite).of(args.precision),
            None => params.stand_in(8),
        });
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let (bound, vectorized) = match bind_whole_units(&self.gpu, &operands, &bound) {
            Some(whole) => (whole, true),
            None => (bound, false),
        };
        let base = |slot: u32| bound.iter().find(|b| b.slot == slot).map_or(0, |b| b.base);

        let wg = self.workgroup_size;
        let invocations = len.div_ceil(ELEMENTS_PER_INVOCATION);
        let workgroups = div_ceil(invocations, wg as usize)
            .min(self.gpu.limits().max_compute_workgroups_per_dimension)
            .max(1);
        let mut p = OptParams {
            len: len as u32,
            flags: if guard { FLAG_GUARD } else { 0 },
            tasks: if guard { args.tasks as u32 } else { 0 },
            stride: workgroups * wg,
            p_base: base(2),
            g_base: base(3),
            m_base: base(4),
            v_base: base(5),
            loss_base: base(6),
            status_base: base(7),
            copy_base: base(8),
            ..Default::default()
        };
        if args.params_copy.is_some() {
            p.flags |= FLAG_COPY;
        }
        match opt {
            OptimizerConfig::Sgd { momentum } => p.decay_or_momentum = momentum,
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | OptimizerConfig::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                p.beta1 = beta1;
                p.one_minus_beta1 = (1.0 - beta1 as f64) as f32;
                p.beta2 = beta2;
                p.one_minus_beta2 = (1.0 - beta2 as f64) as f32;
                p.eps = eps;
                p.decay_or_momentum = weight_decay;
                if weight_decay > 0.0 {
                    p.flags |= if matches!(opt, OptimizerConfig::Adam { .. }) {
                        FLAG_L2
                    } else {
                        FLAG_DECOUPLED
                    };
                }
            }
        }

        let entry = if adam { "adam" } else { "sgd" };
        // Zero-filled: step 0, a no-op until `set_step`.
        let uniform = self
            .gpu
            .scoped("creating the optimizer's step uniform", || {
                self.gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("optimizer step"),
                    size: std::mem::size_of::<StepParams>() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?;
        let program = (
            program_for(if vectorized { &VEC4 } else { &SCALAR }, args.precision),
            entry,
            &[("WG", wg)][..],
        );
        let label = if adam {
            "optimizer adam"
        } else {
            "optimizer sgd"
        };
        let step = [(STEP_SLOT, Extra::Buffer(&uniform))];
        let dispatch = Dispatch::launch(
            &self.gpu,
            label,
            program,
            &p,
            (&bound, &step),
            [workgroups, 1, 1],
        )?;
        Ok(OptimizerStep {
            dispatch,
            uniform,
            config: opt,
            vectorized,
        })
    }

    /// Checks, binds and records one step into `target`: a [`wgpu::CommandEncoder`]
    /// or an open [`wgpu::ComputePass`]. Nothing is recorded when a check fails. The
    /// returned step still needs [`OptimizerStep::set_step`] before the submit.
    pub fn encode_update(
        &self,
        target: &mut impl Recorder,
        args: &OptimizerUpdate<'_>,
    ) -> Result<OptimizerStep> {
        let step = self.update(args)?;
        step.encode(target);
        Ok(step)
    }
}
