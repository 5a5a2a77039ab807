//! Load-balancing auxiliary loss of the gates, so that (sparse) gates do not collapse
//! onto a few experts: per gate `t`, the importance `I[t, e] = Σ_b G[t, b, e]`, the
//! load `L[t, e] = #{b : G[t, b, e] ≠ 0}` and the loss `aux[t] = w · CV²(I[t, :])`, the
//! squared coefficient of variation of the importances over the experts (population
//! variance over mean²), in one dispatch; and its backward pass, one dispatch that adds
//! the loss's gradient to the gate + mix backward's logit gradient `dz` in place.
//!
//! `G: [gates, rows, experts]` is the gate + mix forward's output, dense
//! or top-k ([`gate_mix`](super::gate_mix#top-k-mode), zero outside each row's
//! selection). The forward stores, next to the loss, the coefficient
//! `a[t, e] = w · ∂CV²/∂I[t, e]`; the aux loss adds `a[t, e]` to the gate gradient
//! `dg[t, b, e]` of every row, and since `dz = G ⊙ (dg − ⟨G, dg⟩)` is linear in `dg`
//! the backward does `dz[t, b, e] += G[t, b, e] · (a[t, e] − Σ_e' G[t, b, e'] · a[t, e'])`.
//! Where `G` is zero nothing changes, so a top-k gate's gradient still flows only
//! through the selected logits. Record it after the first dispatch of
//! [`GateMix::backward`](super::gate_mix::GateMix::backward) (which writes `dz`) and
//! before the GEMMs that read `dz`.
//!
//! A top-1 gate's weight is 1 on its one expert whatever the logits, so there the loss
//! has no gradient (its importance and load are still reported); top-k with k ≥ 2 and
//! the dense gate get one.
//!
//! When the mean importance is zero (`G` all zero) CV² is undefined: the loss and its
//! coefficients are 0 there, as they are with `w = 0` or a single expert. A zero step
//! never touches `dz`, so with `w = 0` the backward leaves `dz` bitwise as it was.
//!
//! Both passes sum in a fixed order (one workgroup per gate in the forward: strided
//! sequential sums, then a fixed tree), without atomics: results are bitwise
//! reproducible for a given workgroup size and shape.
//!
//! One workgroup sums a whole gate, so each of its invocations loops over about
//! `rows × experts / (4 × workgroup size)` values. Mesa's llvmpipe (lavapipe) silently
//! ends the loops of an invocation after [`LOOP_BUDGET`] iterations in all, so a shape
//! past that is an [`Error::Limit`](crate::Error::Limit) on every device; with the default 64 invocations
//! that is about 16 million gate values per gate, and
//! [`Balance::with_workgroup_size`] raises it.
//!
//! # The load loss
//!
//! [`Balance::forward_load`] computes instead the Switch Transformer / GShard load
//! loss, for top-k gates whose importance loss cannot reach the unselected logits:
//! `aux[t] = w · E · Σ_e f[t, e] · P[t, e]` with `f[t, e] = L[t, e] / (k · B)` the
//! fraction of routed slots (held constant) and `P[t, e] = (1/B) Σ_b p[t, b, e]`, the
//! mean of the *full* softmax `p` of the gate's logits over the `E` experts it sees
//! (written by the top-k gate forward, as
//! [`GateMixTopK::full_softmax`](super::gate_mix::GateMixTopK::full_softmax)).
//! Its stats: the importance section holds `Σ_b p`, the load section `L`, the
//! coefficients `a[t, e] = w · E · f[t, e] / B`, and `aux[t] = Σ_e a · Σ_b p`. The
//! gradient `∂aux/∂z[t, b, e'] = p[b, e'] · (a[t, e'] − Σ_e a[t, e] · p[b, e])` is the
//! importance loss's backward with `p` in place of `G`: pass `p` as
//! [`BalanceBackward::g`]. It reaches every logit the gate sees, selected or not. With
//! `k = E` (a dense gate) `f = 1/E` wherever `G` is nonzero, the loss is `w` and its
//! gradient 0.
//!
//! Shader: `shaders/balance.wgsl`, with the storage part (`shaders/storage_*.wgsl`) of
//! the call's [`Precision`], which sets the type of `G` and `dz`; the small output
//! buffer ([`BalanceShape::stats_len`]) is always f32.
//!
//! # Example
//!
//! A gate over 4 experts, its balance loss, and the backward pass with the loss's
//! gradient added to `dz` between the gate's two backward steps:
//!
//! ```
//! use mmoe_wgpu::kernels::balance::{
//!     Balance, BalanceBackward, BalanceForward, BalanceShape, BalanceStats,
//! };
//! use mmoe_wgpu::kernels::gate_mix::{GateMix, GateMixBackward, GateMixForward, GateMixShape};
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = mmoe_wgpu::Gpu::new()?;
//! let shape = GateMixShape { gates: 1, experts: 4, rows: 8, inputs: 3, width: 2, input: mmoe_wgpu::InputLayout::Shared };
//! let filled = |name: &str, n: usize| -> mmoe_wgpu::Result<wgpu::Buffer> {
//!     gpu.upload(name, &(0..n).map(|i| (i % 7) as f32 / 7.0 - 0.4).collect::<Vec<_>>())
//! };
//! let (x, wg) = (filled("x", shape.x_len())?, filled("wg", shape.wg_len())?);
//! let (bg, h) = (filled("bg", shape.bg_len())?, filled("h", shape.h_len())?);
//! let dm = filled("dm", shape.m_len())?;
//! let out = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64);
//! let (g, m) = (out("g", shape.g_len())?, out("m", shape.m_len())?);
//! let (dh, dz) = (out("dh", shape.h_len())?, out("dz", shape.g_len())?);
//! let (dwg, dbg) = (out("dwg", shape.wg_len())?, out("dbg", shape.bg_len())?);
//! let balance_shape = BalanceShape::from(shape);
//! let stats = gpu.storage_buffer("stats", balance_shape.stats_bytes())?;
//!
//! let (gate, balance) = (GateMix::new(&gpu), Balance::new(&gpu));
//! let view = |b| BufferView::new(b);
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! gate.encode_forward(&mut encoder, &GateMixForward {
//!     shape, precision: Precision::F32,
//!     x: view(&x), wg: view(&wg), bg: view(&bg), h: view(&h), g: view(&g), m: view(&m),
//! })?;
//! balance.encode_forward(&mut encoder, &BalanceForward {
//!     shape: balance_shape, weight: 0.01, precision: Precision::F32,
//!     g: view(&g), stats: view(&stats),
//! })?;
//! let gate_backward = gate.backward(&GateMixBackward {
//!     shape, precision: Precision::F32,
//!     x: view(&x), wg: view(&wg), h: view(&h), g: view(&g), dm: view(&dm),
//!     dh: view(&dh), dz: view(&dz), dwg: view(&dwg), dbg: view(&dbg),
//!     dx: None, accumulate_dx: false,
//! relu_dh: false,
//! })?;
//! gate_backward[0].encode(&mut encoder); // writes dz
//! balance.encode_backward(&mut encoder, &BalanceBackward {
//!     shape: balance_shape, precision: Precision::F32,
//!     g: view(&g), stats: view(&stats), dz: view(&dz),
//! })?;
//! for dispatch in &gate_backward[1..] {
//!     dispatch.encode(&mut encoder); // dWg, dbg (and dX) from the updated dz
//! }
//! gpu.queue().submit([encoder.finish()]);
//!
//! let stats: Vec<f32> = gpu.read(&stats, 0, balance_shape.stats_len())?;
//! let stats = BalanceStats::split(&balance_shape, &stats)?;
//! // A softmax gives every expert a weight on every row, and a row's weights sum to 1.
//! assert_eq!(stats.load, [8.0; 4]);
//! assert!((stats.importance.iter().sum::<f32>() - 8.0).abs() < 1e-5);
//! assert!(stats.aux[0] >= 0.0);
//! # Ok(())
//! # }
//! ```

use super::binding::{program_for, storage_programs};
use super::{BufferView, Dispatch, Operand, Precision, bind_operands, div_ceil};
use crate::Result;
use crate::gpu::ShaderProgram;
pub use crate::shape::{BalanceLoss, BalanceShape, BalanceStats};
use crate::shape::{check_load_k, check_weight};

const SOURCE: (&str, &str) = ("balance.wgsl", include_str!("../../shaders/balance.wgsl"));

/// The kernels in f32 and f16 storage.
const PROGRAM: [ShaderProgram; 2] = storage_programs!("balance", SOURCE);

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &PROGRAM;

use crate::gpu::BindingKind::{Read, ReadWrite};

/// The workgroup size [`Balance::new`] uses.
pub const DEFAULT_WORKGROUP_SIZE: u32 = 64;

pub use super::LOOP_BUDGET;

/// Loop passes of the forward's busiest invocation (0), counted as llvmpipe counts
/// them, from above: each time a loop is entered, its iterations plus two (measured:
/// an entry costs its iterations plus one or two). The loops: the row lanes' doubling
/// loop, the passes over `lanes` experts, in each the rows four at a time and the
/// tree, then the loss's three loops over the experts.
fn forward_iterations(s: &BalanceShape, workgroup_size: u32) -> u64 {
    let (experts, rows, wg) = (s.experts as u64, s.rows as u64, workgroup_size as u64);
    let lanes = experts.min(wg);
    let row_lanes = wg / lanes;
    let tree = row_lanes.next_power_of_two().trailing_zeros() as u64;
    let passes = experts.div_ceil(lanes);
    let pass = (rows.div_ceil(4 * row_lanes) + 2) + (tree + 2);
    (tree + 2) + (passes + 2) + passes * pass + 3 * (experts + 2)
}

/// Loop passes of each backward invocation, counted as for
/// [`forward_iterations`]: its rows, each with two loops over the experts.
fn backward_iterations(s: &BalanceShape, invocations: u64) -> u64 {
    let rows = ((s.gates * s.rows) as u64).div_ceil(invocations);
    rows * (1 + 2 * (s.experts as u64 + 2)) + 2
}

fn check_loop_budget(context: &str, iterations: u64, workgroup_size: u32) -> Result<()> {
    super::check_loop_budget(
        context,
        iterations,
        &format!(
            "with {workgroup_size} invocations per workgroup; a larger workgroup size or \
             fewer rows per call needs fewer"
        ),
    )
}

/// Operands of the forward pass.
#[derive(Clone, Copy, Debug)]
pub struct BalanceForward<'a> {
    /// Shape.
    pub shape: BalanceShape,
    /// The loss weight `w`: finite and ≥ 0; 0 turns the loss and its gradient off. A
    /// run-time value: one pipeline serves every weight.
    pub weight: f32,
    /// Storage type of `G`; the stats and the arithmetic are f32 either way.
    pub precision: Precision,
    /// The gate values `G: [gates, rows, experts]`.
    pub g: BufferView<'a>,
    /// Output: the stats, [`BalanceShape::stats_len`] f32
    /// ([`BalanceShape::stats_bytes`] bytes), laid out as [`BalanceStats`] describes;
    /// in a buffer other than `g`'s.
    pub stats: BufferView<'a>,
}

/// What the load loss's forward pass ([`Balance::forward_load`]) takes beside the
/// [`BalanceForward`] operands, whose `G` it only counts the nonzeros of.
#[derive(Clone, Copy, Debug)]
pub struct BalanceLoad<'a> {
    /// Experts each gate keeps per row (its top k), 1 ≤ k ≤ `seen`.
    pub k: usize,
    /// Experts each gate sees, the `E` of the loss, 1 ≤ seen ≤ experts (all of them
    /// unless the gates have experts of their own).
    pub seen: usize,
    /// The full softmax `p: [gates, rows, experts]` of each gate's logits over the
    /// experts it sees (0 for the others), summed; stored as the forward's
    /// `precision` says.
    pub p: BufferView<'a>,
}

/// Operands of the backward pass.
#[derive(Clone, Copy, Debug)]
pub struct BalanceBackward<'a> {
    /// Shape.
    pub shape: BalanceShape,
    /// Storage type of `G` and `dz`; the arithmetic is f32 either way.
    pub precision: Precision,
    /// The gate values `G`, as given to the forward; for the load loss, the full
    /// softmax `p` given to [`Balance::forward_load`].
    pub g: BufferView<'a>,
    /// The forward's stats (only the coefficients are read).
    pub stats: BufferView<'a>,
    /// `dz: [gates, rows, experts]`, the gate + mix backward's logit gradient, updated
    /// in place; in a buffer other than `g`'s and `stats`'s.
    pub dz: BufferView<'a>,
}

crate::kernels::binding::host_struct! {
    /// Mirrors `BalanceParams` in the shader.
    struct BalanceParams {
        gates: u32,
        rows: u32,
        experts: u32,
        weight: f32,
        g_base: u32,
        stats_base: u32,
        dz_base: u32,
        kind: u32,
        p_base: u32,
        k: u32,
        seen: u32,
        _pad: u32,
    }
}

/// `KIND_IMPORTANCE` and `KIND_LOAD` in the shader.
const KIND_IMPORTANCE: u32 = 0;
const KIND_LOAD: u32 = 1;

impl BalanceParams {
    fn new(s: &BalanceShape) -> Self {
        BalanceParams {
            gates: s.gates as u32,
            rows: s.rows as u32,
            experts: s.experts as u32,
            ..Default::default()
        }
    }
}

super::dispatch::sized_family! {
    /// The balance loss kernels on one device. Cheap to clone; pipelines are compiled
    /// on first use and cached per device.
    pub struct Balance("balance", per "workgroup", bytes 8);
    // The forward's tree keeps an f32 and a u32 per invocation in workgroup memory.
    "The forward's summation order, and so the last bits of its results, depend on it."
}

impl Balance {
    /// Checks and binds the forward pass: one dispatch, one workgroup per gate.
    pub fn forward(&self, args: &BalanceForward<'_>) -> Result<Dispatch> {
        self.forward_pass("balance forward", args, None)
    }

    /// Checks and binds the load loss's forward pass (see the [module
    /// docs](self#the-load-loss)): one dispatch, one workgroup per gate.
    pub fn forward_load(
        &self,
        args: &BalanceForward<'_>,
        load: &BalanceLoad<'_>,
    ) -> Result<Dispatch> {
        self.forward_pass("balance load forward", args, Some(load))
    }

    /// The forward of the importance loss, or of the load loss when `load` is given.
    fn forward_pass(
        &self,
        ctx: &'static str,
        args: &BalanceForward<'_>,
        load: Option<&BalanceLoad<'_>>,
    ) -> Result<Dispatch> {
        let s = &args.shape;
        s.validate(ctx)?;
        check_weight(ctx, args.weight)?;
        args.precision.check(&self.gpu, ctx)?;
        let iterations = forward_iterations(s, self.workgroup_size);
        check_loop_budget(ctx, iterations, self.workgroup_size)?;
        if let Some(load) = load {
            check_load_k(ctx, s, load.k, load.seen)?;
        }
        let g = Operand::new("g", 1, args.g, s.g_len(), Read).of(args.precision);
        let p_operand = match load {
            Some(load) => Operand::new("p", 5, load.p, s.g_len(), Read).of(args.precision),
            // p is not read: G stands in for it.
            None => g.stand_in(5),
        };
        let operands = [
            g,
            Operand::new("stats", 2, args.stats, s.stats_len(), ReadWrite),
            p_operand,
        ];
        let bound = bind_operands(&self.gpu, ctx, &operands)?;
        let mut p = BalanceParams::new(s);
        // −0 and 0 are one weight: one value keeps one cached bind group.
        p.weight = args.weight.abs();
        p.g_base = bound[0].base;
        p.stats_base = bound[1].base;
        p.kind = KIND_IMPORTANCE;
        if let Some(load) = load {
            p.p_base = bound[2].base;
            p.kind = KIND_LOAD;
            p.k = load.k as u32;
            p.seen = load.seen as u32;
        }
        let gates = s.gates as u32;
        self.build(ctx, "balance_forward", args.precision, &p, &bound, gates)
    }

    /// Checks and binds the backward pass: one dispatch, one invocation per gate and
    /// row. Record it after the forward and after whatever wrote `dz`.
    pub fn backward(&self, args: &BalanceBackward<'_>) -> Result<Dispatch> {
        const CTX: &str = "balance backward";
        let s = &args.shape;
        s.validate(CTX)?;
        args.precision.check(&self.gpu, CTX)?;
        // Beyond the device's workgroup count the shader strides over the rest.
        let max = self.gpu.limits().max_compute_workgroups_per_dimension;
        let groups = div_ceil(s.gates * s.rows, self.workgroup_size as usize).min(max);
        let invocations = groups as u64 * self.workgroup_size as u64;
        check_loop_budget(
            CTX,
            backward_iterations(s, invocations),
            self.workgroup_size,
        )?;
        let operands = [
            Operand::new("g", 1, args.g, s.g_len(), Read).of(args.precision),
            Operand::new("stats", 3, args.stats, s.stats_len(), Read),
            Operand::new("dz", 4, args.dz, s.g_len(), ReadWrite).of(args.precision),
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let mut p = BalanceParams::new(s);
        p.g_base = bound[0].base;
        p.stats_base = bound[1].base;
        p.dz_base = bound[2].base;
        self.build(CTX, "balance_backward", args.precision, &p, &bound, groups)
    }

    crate::kernels::encoders! {
        encode_forward => forward(args: &BalanceForward<'_>);
        encode_forward_load => forward_load(args: &BalanceForward<'_>, load: &BalanceLoad<'_>);
        encode_backward => backward(args: &BalanceBackward<'_>);
    }

    fn build(
        &self,
        ctx: &'static str,
        entry: &'static str,
        precision: Precision,
        params: &BalanceParams,
        bound: &[super::binding::BoundOperand<'_>],
        workgroups: u32,
    ) -> Result<Dispatch> {
        let constants = [("WG", self.workgroup_size)];
        let kernel = (program_for(&PROGRAM, precision), entry, &constants[..]);
        let groups = [workgroups, 1, 1];
        Dispatch::launch(&self.gpu, ctx, kernel, params, (bound, &[]), groups)
    }
}
