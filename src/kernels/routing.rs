//! Routing for sparse gates: from the gate values `G: [gates, rows, experts]`, for
//! every expert the rows some gate sends to it (`G[t, row, e] != 0` for some `t`),
//! as the [`RowMap`] the ragged grouped GEMM runs on, in one dispatch.
//!
//! The map is `u32`s: `experts` counts, then one list of `rows` row indices per expert,
//! its routed rows in ascending order followed by its unrouted rows in ascending order
//! (see [`RowMap`]). Each list is a full permutation of the rows, so the ragged
//! forward pass can write zeros to the unrouted rows of its output.
//!
//! One workgroup per expert numbers the routed rows with a workgroup prefix sum, chunk
//! by chunk: integer sums of a fixed shape, no atomics, so the map is the same on every
//! run and device, whatever the workgroup size.
//!
//! Shader: `shaders/routing.wgsl`, with the storage part (`shaders/storage_*.wgsl`)
//! of the call's [`Precision`], which sets the type of `G`.
//!
//! # Example
//!
//! Two gates over three experts on four rows: the rows each expert must compute, then
//! the experts' layer on those rows alone.
//!
//! ```
//! use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemmForward, GroupedGemm, RowMap};
//! use mmoe_wgpu::kernels::routing::{Routing, RoutingForward, RoutingShape};
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//! use mmoe_wgpu::{Activation, GemmShape, Gpu, InputLayout};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = Gpu::new()?;
//! let shape = RoutingShape { gates: 2, rows: 4, experts: 3 };
//! #[rustfmt::skip]
//! let g = gpu.upload("g", &[
//!     // gate 0: rows 0..4 over experts 0..3
//!     0.7f32, 0.3, 0.0,   0.0, 1.0, 0.0,   0.0, 0.0, 0.0,   0.0, 0.6, 0.4,
//!     // gate 1
//!     0.5, 0.0, 0.5,      0.0, 0.0, 0.0,   0.0, 0.0, 0.0,   0.0, 0.0, 1.0,
//! ])?;
//! let routes = gpu.storage_buffer("routes", 4 * shape.routes_len() as u64)?;
//!
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! Routing::new(&gpu).encode_forward(&mut encoder, &RoutingForward {
//!     shape,
//!     precision: Precision::F32,
//!     g: BufferView::new(&g),
//!     routes: BufferView::new(&routes),
//! })?;
//!
//! // Each expert's layer on the rows routed to it; zeros on the others.
//! let gemm = GemmShape { groups: 3, rows: 4, inputs: 2, outputs: 1, input: InputLayout::Shared };
//! let x = gpu.upload("x", &[1.0f32, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0])?;
//! let w = gpu.upload("w", &[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0])?;
//! let y = gpu.storage_buffer("y", 4 * gemm.y_len() as u64)?;
//! GroupedGemm::new(&gpu).encode_forward_ragged(
//!     &mut encoder,
//!     &GroupedGemmForward {
//!         shape: gemm,
//!         activation: Activation::Identity,
//!         precision: Precision::F32,
//!         x: BufferView::new(&x),
//!         w: BufferView::new(&w),
//!         bias: None,
//!         y: BufferView::new(&y),
//!     },
//!     RowMap::new(&routes),
//! )?;
//! gpu.queue().submit([encoder.finish()]);
//!
//! let map: Vec<u32> = gpu.read(&routes, 0, shape.routes_len())?;
//! assert_eq!(map[..3], [1, 3, 2]); // rows routed to experts 0, 1, 2
//! assert_eq!(map[3..7], [0, 1, 2, 3]); // expert 0: row 0, then the others
//! assert_eq!(map[7..11], [0, 1, 3, 2]); // expert 1: rows 0, 1, 3, then row 2
//! assert_eq!(map[11..15], [0, 3, 1, 2]); // expert 2: rows 0, 3, then rows 1, 2
//! let y: Vec<f32> = gpu.read(&y, 0, gemm.y_len())?; // [experts, rows, 1]
//! assert_eq!(y, [1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 2.0, 0.0, 0.0, 8.0]);
//! # Ok(())
//! # }
//! ```

use super::binding::{program_for, storage_programs};
use super::{BufferView, Dispatch, Operand, Precision, bind_operands};
use crate::Result;
use crate::gpu::ShaderProgram;
pub use crate::shape::RoutingShape;

pub use super::grouped_gemm::RowMap;

const SOURCE: (&str, &str) = ("routing.wgsl", include_str!("../../shaders/routing.wgsl"));

/// The kernel in f32 and f16 storage of `G`.
const PROGRAM: [ShaderProgram; 2] = storage_programs!("routing", SOURCE);

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &PROGRAM;

const ENTRY: &str = "route_rows";

use crate::gpu::BindingKind::{Read, ReadWrite};

/// The workgroup size [`Routing::new`] uses.
pub const DEFAULT_WORKGROUP_SIZE: u32 = 64;

/// Operands of the routing kernel.
#[derive(Clone, Copy, Debug)]
pub struct RoutingForward<'a> {
    /// Shape.
    pub shape: RoutingShape,
    /// Storage type of `G` (the map is always `u32`).
    pub precision: Precision,
    /// The gate values `G: [gates, rows, experts]`, zero where a gate did not choose
    /// an expert (a top-k gate's output).
    pub g: BufferView<'a>,
    /// Output: the row map, [`RoutingShape::routes_len`] `u32`s (layout in
    /// [`RowMap`]); a buffer distinct from `g`.
    pub routes: BufferView<'a>,
}

crate::kernels::binding::host_struct! {
    /// Mirrors `RoutingParams` in the shader.
    struct RoutingParams {
        gates: u32,
        rows: u32,
        experts: u32,
        g_base: u32,
        routes_base: u32,
        _pad: [u32; 3],
    }
}

super::dispatch::sized_family! {
    /// The routing kernel on one device. Cheap to clone; the pipeline is compiled on first
    /// use and cached per device.
    pub struct Routing("routing", per "expert", bytes 4);
    // The prefix sum keeps one u32 per invocation in workgroup memory.
    "The map does not depend on it."
}

impl Routing {
    /// Checks and binds the routing: one dispatch, one workgroup per expert.
    pub fn forward(&self, args: &RoutingForward<'_>) -> Result<Dispatch> {
        const CTX: &str = "routing";
        let s = &args.shape;
        s.validate(CTX)?;
        args.precision.check(&self.gpu, CTX)?;
        let operands = [
            Operand::new("g", 1, args.g, s.g_len(), Read).of(args.precision),
            Operand::new("routes", 2, args.routes, s.routes_len(), ReadWrite),
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let params = RoutingParams {
            gates: s.gates as u32,
            rows: s.rows as u32,
            experts: s.experts as u32,
            g_base: bound[0].base,
            routes_base: bound[1].base,
            _pad: [0; 3],
        };
        let constants = [("WG", self.workgroup_size)];
        let kernel = (program_for(&PROGRAM, args.precision), ENTRY, &constants[..]);
        let groups = [s.experts as u32, 1, 1];
        Dispatch::launch(&self.gpu, CTX, kernel, &params, (&bound, &[]), groups)
    }

    crate::kernels::encoders! {
        encode_forward => forward(args: &RoutingForward<'_>);
    }
}
