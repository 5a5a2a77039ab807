//! k-means (Lloyd's algorithm) on the GPU: the assignment step, each point's nearest
//! centroid as a GEMM-like distance computation `‖x‖² − 2·x·c + ‖c‖²` plus an
//! arg-min, and the update, each cluster's mean, in a fixed reduction order.
//!
//! - [`assign`](KMeans::assign): one dispatch. Each point's nearest centroid
//!   (`u32`) and its squared distance. Ties go to the lowest cluster index.
//! - [`update`](KMeans::update): two dispatches. Per chunk of
//!   [`KMEANS_CHUNK_ROWS`] rows, each cluster's column sums and row count, rows in
//!   order; then per cluster and column the chunks' sums in chunk order, over the
//!   count. No float atomics: the centroids are bitwise the same on every run. An
//!   **empty cluster keeps its old centroid** (the caller may then re-seed it; with
//!   centroids started on distinct points, as k-means++ does, a cluster only empties
//!   when points tie).
//!
//! Everything is f32: clustering runs once before training, and f16 storage would
//! round distances into ties. The kernels cannot check the values: non-finite points
//! give unspecified assignments (the host-side callers check them first).
//!
//! Shader: `shaders/kmeans.wgsl`.
//!
//! # Example
//!
//! Four points on a line, two centroids: assign, then move the centroids to the means.
//!
//! ```
//! use mmoe_wgpu::kernels::BufferView;
//! use mmoe_wgpu::kernels::kmeans::{KMeans, KMeansAssign, KMeansShape, KMeansUpdate};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = mmoe_wgpu::Gpu::new()?;
//! let shape = KMeansShape { rows: 4, cols: 1, clusters: 2 };
//! let x = gpu.upload("x", &[0.0f32, 1.0, 9.0, 10.0])?;
//! let centroids = gpu.upload("centroids", &[0.0f32, 1.0])?;
//! let assignment = gpu.storage_buffer("assignment", 4 * 4)?;
//! let distance = gpu.storage_buffer("distance", 4 * 4)?;
//! let partial = gpu.storage_buffer("partial", 4 * shape.partial_len() as u64)?;
//! let updated = gpu.storage_buffer("updated", 4 * 2)?;
//! let counts = gpu.storage_buffer("counts", 4 * 2)?;
//!
//! let kmeans = KMeans::new(&gpu);
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! kmeans.encode_assign(&mut encoder, &KMeansAssign {
//!     shape,
//!     x: BufferView::new(&x),
//!     centroids: BufferView::new(&centroids),
//!     assignment: BufferView::new(&assignment),
//!     distance: BufferView::new(&distance),
//! })?;
//! kmeans.encode_update(&mut encoder, &KMeansUpdate {
//!     shape,
//!     x: BufferView::new(&x),
//!     assignment: BufferView::new(&assignment),
//!     centroids: BufferView::new(&centroids),
//!     partial: BufferView::new(&partial),
//!     updated: BufferView::new(&updated),
//!     counts: BufferView::new(&counts),
//! })?;
//! gpu.queue().submit([encoder.finish()]);
//!
//! assert_eq!(gpu.read::<u32>(&assignment, 0, 4)?, [0, 1, 1, 1]);
//! assert_eq!(gpu.read::<f32>(&distance, 0, 4)?, [0.0, 0.0, 64.0, 81.0]);
//! assert_eq!(gpu.read::<f32>(&updated, 0, 2)?, [0.0, 20.0 / 3.0]);
//! assert_eq!(gpu.read::<u32>(&counts, 0, 2)?, [1, 3]);
//! # Ok(())
//! # }
//! ```

use super::binding::BoundOperand;
use super::dispatch::check_loop_budget;
use super::{BufferView, Dispatch, Operand, bind_operands, div_ceil};
use crate::Result;
use crate::gpu::{BindingKind, ShaderProgram};
pub use crate::shape::{KMEANS_CHUNK_ROWS, KMeansShape};

const SOURCE: (&str, &str) = ("kmeans.wgsl", include_str!("../../shaders/kmeans.wgsl"));

/// The kernels, f32 only.
const PROGRAM: ShaderProgram = ShaderProgram {
    name: "kmeans",
    parts: &[SOURCE],
    needs_subgroups: false,
    needs_f16: false,
};

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &[PROGRAM];

use BindingKind::{Read, ReadWrite};

/// The workgroup size [`KMeans::new`] uses.
pub const DEFAULT_WORKGROUP_SIZE: u32 = 64;

/// Rows and clusters of one invocation's register tile in the assignment (the shader
/// holds it in vec4s).
const TILE: usize = 4;

/// Operands of the assignment step.
#[derive(Clone, Copy, Debug)]
pub struct KMeansAssign<'a> {
    /// Shape.
    pub shape: KMeansShape,
    /// The points `x: [rows, cols]`.
    pub x: BufferView<'a>,
    /// The centroids `[clusters, cols]`.
    pub centroids: BufferView<'a>,
    /// Output: each row's nearest centroid, `[rows]` `u32`; ties go to the lowest
    /// index.
    pub assignment: BufferView<'a>,
    /// Output: each row's squared distance to it, `[rows]`, computed as
    /// `max(‖x‖² − 2·x·c + ‖c‖², 0)`.
    pub distance: BufferView<'a>,
}

/// Operands of the update step.
#[derive(Clone, Copy, Debug)]
pub struct KMeansUpdate<'a> {
    /// Shape.
    pub shape: KMeansShape,
    /// The points `x: [rows, cols]`.
    pub x: BufferView<'a>,
    /// Each row's cluster, `[rows]` `u32`, each below `clusters` (an assignment's
    /// output; a row of a larger index counts in no cluster).
    pub assignment: BufferView<'a>,
    /// The old centroids `[clusters, cols]`, which an empty cluster keeps.
    pub centroids: BufferView<'a>,
    /// Scratch of [`KMeansShape::partial_len`] f32: the per-chunk sums.
    pub partial: BufferView<'a>,
    /// Output: the new centroids `[clusters, cols]`, a buffer distinct from
    /// `centroids`.
    pub updated: BufferView<'a>,
    /// Output: rows per cluster, `[clusters]` `u32`.
    pub counts: BufferView<'a>,
}

crate::kernels::binding::host_struct! {
    /// Mirrors `KMeansParams` in the shader.
    struct KMeansParams {
        rows: u32,
        cols: u32,
        clusters: u32,
        chunk_rows: u32,
        chunks: u32,
        x_base: u32,
        centroid_base: u32,
        assignment_base: u32,
        distance_base: u32,
        partial_base: u32,
        updated_base: u32,
        count_base: u32,
    }
}

impl KMeansParams {
    fn of(s: &KMeansShape) -> Self {
        KMeansParams {
            rows: s.rows as u32,
            cols: s.cols as u32,
            clusters: s.clusters as u32,
            chunk_rows: KMEANS_CHUNK_ROWS as u32,
            chunks: s.chunks() as u32,
            ..Default::default()
        }
    }
}

super::dispatch::sized_family! {
    /// The k-means kernels on one device. Cheap to clone; pipelines compile on first use
    /// and are cached per device.
    pub struct KMeans("kmeans", per "workgroup", bytes 1);
    "The results do not depend on it (each output is one invocation's, in a fixed order)."
}

impl KMeans {
    /// The dispatch of `entry` over `bound`, `groups` workgroups.
    fn dispatch(
        &self,
        ctx: &'static str,
        entry: &'static str,
        params: &KMeansParams,
        bound: &[BoundOperand<'_>],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        let constants = [("WG", self.workgroup_size)];
        let kernel = (&PROGRAMS[0], entry, &constants[..]);
        Dispatch::launch(&self.gpu, ctx, kernel, params, (bound, &[]), groups)
    }

    /// Checks and binds the assignment step: one dispatch, one invocation per 4 rows.
    pub fn assign(&self, args: &KMeansAssign<'_>) -> Result<Dispatch> {
        const CTX: &str = "kmeans assign";
        let s = &args.shape;
        s.validate(CTX)?;
        // Each block of 4 clusters loops over the columns.
        let iterations = s.clusters.div_ceil(TILE) as u64 * (s.cols as u64 + 2) + 2;
        check_loop_budget(CTX, iterations, "fewer clusters or columns")?;
        let operands = [
            Operand::new("x", 1, args.x, s.x_len(), Read),
            Operand::new("centroids", 2, args.centroids, s.centroids_len(), Read),
            Operand::new("assignment", 3, args.assignment, s.rows, ReadWrite),
            Operand::new("distance", 4, args.distance, s.rows, ReadWrite),
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let params = KMeansParams {
            x_base: bound[0].base,
            centroid_base: bound[1].base,
            assignment_base: bound[2].base,
            distance_base: bound[3].base,
            ..KMeansParams::of(s)
        };
        let groups = div_ceil(s.rows.div_ceil(TILE), self.workgroup_size as usize);
        self.dispatch(CTX, "assign", &params, &bound, [groups, 1, 1])
    }

    /// Checks and binds the update step: two dispatches, to record in order (the
    /// per-chunk sums, then the centroids).
    pub fn update(&self, args: &KMeansUpdate<'_>) -> Result<Vec<Dispatch>> {
        const CTX: &str = "kmeans update";
        let s = &args.shape;
        s.validate(CTX)?;
        check_loop_budget(
            CTX,
            s.chunks() as u64 + 2,
            "fewer rows: each centroid adds one partial sum per chunk of rows",
        )?;
        let operands = [
            Operand::new("x", 1, args.x, s.x_len(), Read),
            Operand::new("assignment", 5, args.assignment, s.rows, Read),
            Operand::new("centroids", 2, args.centroids, s.centroids_len(), Read),
            Operand::new("partial", 6, args.partial, s.partial_len(), ReadWrite),
            Operand::new("updated", 8, args.updated, s.centroids_len(), ReadWrite),
            Operand::new("counts", 9, args.counts, s.clusters, ReadWrite),
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let params = KMeansParams {
            x_base: bound[0].base,
            assignment_base: bound[1].base,
            centroid_base: bound[2].base,
            partial_base: bound[3].base,
            updated_base: bound[4].base,
            count_base: bound[5].base,
            ..KMeansParams::of(s)
        };
        let wg = self.workgroup_size as usize;
        let sums_bound = [bound[0], bound[1], bound[3]];
        let sums_groups = [
            div_ceil(s.cols + 1, wg),
            div_ceil(s.clusters, TILE),
            s.chunks() as u32,
        ];
        let sums = self.dispatch(CTX, "partial_sums", &params, &sums_bound, sums_groups)?;
        // The scratch, written above, is read here at slot 7.
        let means_bound = [bound[2], bound[3].at(7, Read), bound[4], bound[5]];
        let means_groups = [div_ceil(s.cols, wg), s.clusters as u32, 1];
        let means = self.dispatch(
            CTX,
            "centroids_from_sums",
            &params,
            &means_bound,
            means_groups,
        )?;
        Ok(vec![sums, means])
    }

    crate::kernels::encoders! {
        encode_assign => assign(args: &KMeansAssign<'_>);
        encode_update => update(args: &KMeansUpdate<'_>);
    }
}
