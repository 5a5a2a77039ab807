//! What the device can do at best, measured beside the kernels so that their speeds
//! read as fractions of it: a register-only FMA kernel (the arithmetic ceiling) and a
//! streaming copy (the bandwidth ceiling).
//!
//! Absolute GFLOP/s say little across machines: the same kind of machine differs by
//! 1.6× on lavapipe (`LAVAPIPE.md`), and a discrete GPU by orders of magnitude. A
//! kernel's GFLOP/s over the FMA probe's, or its GB/s over the copy probe's, measured
//! in the same run on the same device, carries from one machine to another. The
//! benches print both probes first and every GFLOP/s or GB/s as such a fraction.
//!
//! - [`CeilingProbe::fma`]: each invocation runs eight independent vec4 chains
//!   `c = fma(c, a, b)`, interleaved, from registers only, and writes their sum
//!   once: `64 · iterations` flops per invocation, no memory traffic in the loop.
//! - [`CeilingProbe::copy`]: `dst[i] = src[i]` over vec4s in a grid-stride loop: 32
//!   bytes moved per vec4 (one read, one write).
//! - [`CeilingProbe::measure`] runs both at sizes that fill the device and outrun its
//!   caches, times them with [`Gpu::time_pass`] (GPU timestamps where the device has
//!   them) and returns the best of a few runs as a [`Ceiling`].
//!
//! Shader: `shaders/ceiling_probe.wgsl`. CPU reference of the FMA kernel's output:
//! [`reference::ceiling_probe`](crate::reference::ceiling_probe).
//!
//! # Example
//!
//! ```
//! use mmoe_wgpu::kernels::ceiling_probe::CeilingProbe;
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = mmoe_wgpu::Gpu::new()?;
//! let ceiling = CeilingProbe::new(&gpu).measure()?;
//! println!("{ceiling}");
//! // A kernel that ran 2 GFLOP in 0.1 s, as a fraction of the FMA probe:
//! let fraction = ceiling.of_flops(2e9 / 0.1);
//! assert!(fraction > 0.0);
//! # Ok(())
//! # }
//! ```

use std::fmt;

use super::{BufferView, Dispatch, Operand, bind_operands, check_loop_budget, div_ceil};
use crate::gpu::{BindingKind, Gpu, ShaderProgram, TimeSource};
use crate::{Error, Result};

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &[PROGRAM];

const PROGRAM: ShaderProgram = ShaderProgram {
    name: "ceiling_probe",
    parts: &[(
        "ceiling_probe.wgsl",
        include_str!("../../shaders/ceiling_probe.wgsl"),
    )],
    needs_subgroups: false,
    needs_f16: false,
};

use BindingKind::{Read, ReadWrite};

/// Invocations per workgroup of both probes.
pub const WORKGROUP_SIZE: u32 = 64;
/// Flops of one invocation's loop iteration in [`CeilingProbe::fma`]: eight vec4
/// FMAs of two flops per lane.
pub const FLOPS_PER_ITERATION: u64 = 8 * 4 * 2;
/// Bytes one copied vec4 moves: 16 read, 16 written.
pub const BYTES_PER_COPIED_VEC4: u64 = 32;

/// [`CeilingProbe::measure`]'s FMA run: 65,536 invocations (enough to fill a large
/// discrete GPU several times over) of 1,024 iterations, 4.3 GFLOP.
const MEASURE_INVOCATIONS: usize = 1 << 16;
const MEASURE_ITERATIONS: u32 = 1024;
/// [`CeilingProbe::measure`]'s copy: 64 MiB each way (or the largest binding the
/// device allows, if smaller), past the last-level cache of any current CPU or GPU.
const MEASURE_COPY_BYTES: u64 = 64 << 20;
/// vec4s each invocation of a measuring copy moves.
const COPY_PER_INVOCATION: usize = 8;
/// Timed batches per probe in [`CeilingProbe::measure`], keeping the fastest.
const MEASURE_ROUNDS: usize = 3;

crate::kernels::binding::host_struct! {
    /// Mirrors `ProbeParams` in the shader.
    struct ProbeParams {
        invocations: u32,
        iterations: u32,
        count: u32,
        stride: u32,
        src_base: u32,
        dst_base: u32,
        scale: f32,
        offset: f32,
    }
}

/// Operands of the register-only FMA probe.
#[derive(Clone, Copy, Debug)]
pub struct FmaProbe<'a> {
    /// Invocations, each writing one vec4.
    pub invocations: usize,
    /// Loop iterations of each invocation, at most [`LOOP_BUDGET`](super::LOOP_BUDGET).
    pub iterations: u32,
    /// Each chain's step `c = c·scale + offset`; `|scale| < 1` keeps it finite.
    pub scale: f32,
    /// See `scale`.
    pub offset: f32,
    /// `4 · invocations` f32 outputs at a byte offset that is a multiple of 16.
    pub out: BufferView<'a>,
}

impl FmaProbe<'_> {
    /// Floating-point operations of one run (two per FMA lane).
    pub fn flops(&self) -> f64 {
        self.invocations as f64 * f64::from(self.iterations) * FLOPS_PER_ITERATION as f64
    }
}

/// Operands of the streaming-copy probe.
#[derive(Clone, Copy, Debug)]
pub struct CopyProbe<'a> {
    /// vec4s to copy (`4 · vec4s` f32 each way).
    pub vec4s: usize,
    /// Workgroups of [`WORKGROUP_SIZE`] invocations; each invocation copies every
    /// `workgroups · WORKGROUP_SIZE`-th vec4 from its own index on.
    pub workgroups: u32,
    /// Source, at a byte offset that is a multiple of 16.
    pub src: BufferView<'a>,
    /// Destination, a buffer other than `src`'s, at a byte offset that is a multiple
    /// of 16.
    pub dst: BufferView<'a>,
}

impl CopyProbe<'_> {
    /// Bytes one run reads and writes.
    pub fn bytes(&self) -> f64 {
        self.vec4s as f64 * BYTES_PER_COPIED_VEC4 as f64
    }
}

/// The two ceilings of one device, measured together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceiling {
    /// GFLOP/s of the register-only FMA probe.
    pub fma_gflops: f64,
    /// GB/s (10^9 bytes read plus written per second) of the streaming copy.
    pub copy_gbps: f64,
    /// Bytes of each of the copy's two buffers.
    pub copy_bytes: u64,
    /// How the probes were timed.
    pub source: TimeSource,
}

impl Ceiling {
    /// `flops_per_second` as a fraction of the FMA probe's rate.
    pub fn of_flops(&self, flops_per_second: f64) -> f64 {
        flops_per_second / (self.fma_gflops * 1e9)
    }

    /// `bytes_per_second` as a fraction of the copy probe's rate.
    pub fn of_bandwidth(&self, bytes_per_second: f64) -> f64 {
        bytes_per_second / (self.copy_gbps * 1e9)
    }
}

impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ceiling probe: register-only FMA {:.2} GFLOP/s, streaming copy {:.2} GB/s \
             ({} MiB each way; {})",
            self.fma_gflops,
            self.copy_gbps,
            self.copy_bytes >> 20,
            self.source
        )
    }
}

/// The probes on one device. Cheap to clone; pipelines are compiled on first use and
/// cached per device.
#[derive(Clone, Debug)]
pub struct CeilingProbe {
    gpu: Gpu,
}

/// `view` as a vec4 operand: its byte offset must be a multiple of 16.
fn vec4_operand<'a>(
    context: &str,
    (name, slot): (&'static str, u32),
    view: BufferView<'a>,
    vec4s: usize,
    kind: BindingKind,
) -> Result<Operand<'a>> {
    if !view.offset.is_multiple_of(16) {
        return Err(Error::Binding {
            context: context.into(),
            operand: name.into(),
            problem: format!(
                "offset {} is not a multiple of 16 bytes (a vec4)",
                view.offset
            ),
        });
    }
    Ok(Operand::new(name, slot, view, 4 * vec4s, kind))
}

impl CeilingProbe {
    /// The probes on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        CeilingProbe { gpu: gpu.clone() }
    }

    /// Checks and binds the register-only FMA probe.
    pub fn fma(&self, args: &FmaProbe<'_>) -> Result<Dispatch> {
        const CTX: &str = "ceiling_probe fma";
        if args.invocations == 0 || args.invocations >= u32::MAX as usize / 2 {
            return Err(Error::shape(
                CTX,
                "invocations",
                format!("between 1 and {}", u32::MAX / 2 - 1),
                args.invocations.to_string(),
            ));
        }
        check_loop_budget(
            CTX,
            u64::from(args.iterations) + 2,
            "fewer iterations per invocation",
        )?;
        let out = vec4_operand(CTX, ("out", 2), args.out, args.invocations, ReadWrite)?;
        let bound = bind_operands(&self.gpu, CTX, &[out])?;
        let params = ProbeParams {
            invocations: args.invocations as u32,
            iterations: args.iterations,
            dst_base: bound[0].base / 4,
            scale: args.scale,
            offset: args.offset,
            ..Default::default()
        };
        Dispatch::launch(
            &self.gpu,
            "ceiling_probe fma",
            (&PROGRAM, "fma_chains", &[("WG", WORKGROUP_SIZE)]),
            &params,
            (&bound, &[]),
            [div_ceil(args.invocations, WORKGROUP_SIZE as usize), 1, 1],
        )
    }

    /// Checks and binds the streaming-copy probe.
    pub fn copy(&self, args: &CopyProbe<'_>) -> Result<Dispatch> {
        const CTX: &str = "ceiling_probe copy";
        if args.vec4s == 0 || args.vec4s >= u32::MAX as usize / 2 {
            return Err(Error::shape(
                CTX,
                "vec4s",
                format!("between 1 and {}", u32::MAX / 2 - 1),
                args.vec4s.to_string(),
            ));
        }
        if args.workgroups == 0 {
            return Err(Error::shape(CTX, "workgroups", "at least 1", "0"));
        }
        let stride = u64::from(args.workgroups) * u64::from(WORKGROUP_SIZE);
        check_loop_budget(
            CTX,
            (args.vec4s as u64).div_ceil(stride) + 2,
            "more workgroups",
        )?;
        let src = vec4_operand(CTX, ("src", 1), args.src, args.vec4s, Read)?;
        let dst = vec4_operand(CTX, ("dst", 2), args.dst, args.vec4s, ReadWrite)?;
        let bound = bind_operands(&self.gpu, CTX, &[src, dst])?;
        let params = ProbeParams {
            count: args.vec4s as u32,
            // At most max workgroups (65,535) · 64 invocations: fits a u32.
            stride: stride.min(u64::from(u32::MAX)) as u32,
            src_base: bound[0].base / 4,
            dst_base: bound[1].base / 4,
            ..Default::default()
        };
        Dispatch::launch(
            &self.gpu,
            "ceiling_probe copy",
            (&PROGRAM, "stream_copy", &[("WG", WORKGROUP_SIZE)]),
            &params,
            (&bound, &[]),
            [args.workgroups, 1, 1],
        )
    }

    /// Runs both probes at sizes that fill the device and outrun its caches and
    /// returns the best rate of a few timed runs each (the first run, which
    /// compiles, is not counted). Takes about a second on lavapipe; allocates two
    /// buffers of up to 64 MiB for the time of the call. Native only: it waits for
    /// the device.
    pub fn measure(&self) -> Result<Ceiling> {
        let gpu = &self.gpu;
        let out = gpu.storage_buffer("ceiling probe fma out", 16 * MEASURE_INVOCATIONS as u64)?;
        let fma_args = FmaProbe {
            invocations: MEASURE_INVOCATIONS,
            iterations: MEASURE_ITERATIONS,
            scale: 0.999,
            offset: 0.001,
            out: BufferView::new(&out),
        };
        let fma = self.fma(&fma_args)?;

        let limits = gpu.limits();
        let copy_bytes = MEASURE_COPY_BYTES
            .min(limits.max_storage_buffer_binding_size)
            .min(limits.max_buffer_size)
            / 16
            * 16;
        let src = gpu.storage_buffer("ceiling probe copy src", copy_bytes)?;
        let dst = gpu.storage_buffer("ceiling probe copy dst", copy_bytes)?;
        let vec4s = (copy_bytes / 16) as usize;
        let workgroups = div_ceil(vec4s, COPY_PER_INVOCATION * WORKGROUP_SIZE as usize)
            .min(limits.max_compute_workgroups_per_dimension);
        let copy_args = CopyProbe {
            vec4s,
            workgroups,
            src: BufferView::new(&src),
            dst: BufferView::new(&dst),
        };
        let copy = self.copy(&copy_args)?;

        let fma_seconds = self.best_seconds(&fma)?;
        let copy_seconds = self.best_seconds(&copy)?;
        Ok(Ceiling {
            fma_gflops: fma_args.flops() / fma_seconds / 1e9,
            copy_gbps: copy_args.bytes() / copy_seconds / 1e9,
            copy_bytes,
            source: gpu.time_source(),
        })
    }

    /// Seconds of one run of `dispatch`: a first run (compiling), then the best of
    /// [`MEASURE_ROUNDS`] batches of enough runs to last about 20 ms each.
    fn best_seconds(&self, dispatch: &Dispatch) -> Result<f64> {
        let time = |reps: u32| -> Result<f64> {
            let t = self.gpu.time_pass(reps, |pass| dispatch.record(pass))?;
            Ok(t.total.as_secs_f64() / f64::from(reps))
        };
        time(1)?;
        let mut best = time(1)?;
        let reps = (0.02 / best.max(1e-6)).ceil().clamp(1.0, 256.0) as u32;
        for _ in 0..MEASURE_ROUNDS {
            best = best.min(time(reps)?);
        }
        if best > 0.0 {
            Ok(best)
        } else {
            Err(Error::Gpu {
                during: "timing the ceiling probe".into(),
                message: "a run measured zero time".into(),
            })
        }
    }
}
