//! Partitioning rows with k-means on the GPU: k-means++ seeding on the host, then
//! Lloyd iterations of [`kernels::kmeans`](crate::kernels::kmeans) until no row
//! changes cluster.
//!
//! The seeding runs on the host in f64 from a seeded [`Rng`]: k-means++ picks one
//! centroid after another, each draw depending on the distances to all those before,
//! so on the GPU it would be `k` round trips for `k · rows · cols` work that the host
//! does in milliseconds at the sizes a start partitions (thousands of rows); and the
//! host's f64 draws are the same on every device. The iterations, where the work is,
//! run on the GPU.

use crate::gpu::Gpu;
use crate::kernels::BufferView;
use crate::kernels::kmeans::{KMeans, KMeansAssign, KMeansShape, KMeansUpdate};
use crate::rng::Rng;
use crate::{Error, Result};

/// A partition of rows into clusters.
#[derive(Clone, Debug, PartialEq)]
pub struct Clustering {
    /// Values per row the clustering saw.
    pub cols: usize,
    /// The centroids, `[clusters, cols]`: each the mean of its rows (an empty
    /// cluster keeps its last centroid).
    pub centroids: Vec<f32>,
    /// Each row's cluster (its nearest centroid; ties to the lowest index).
    pub assignment: Vec<u32>,
    /// Rows per cluster.
    pub counts: Vec<usize>,
    /// Sum of the rows' squared distances to their centroids.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// Whether the last iteration moved no row (else the iteration limit stopped it).
    pub converged: bool,
}

/// Checks `x` is `rows × cols` finite values with `1 ≤ clusters ≤ rows`; returns
/// `rows`. `what` names the data in errors.
pub(crate) fn check_points(what: &str, x: &[f32], cols: usize, clusters: usize) -> Result<usize> {
    if cols == 0 {
        return Err(Error::invalid(
            what,
            "0 columns: k-means needs at least one",
        ));
    }
    if !x.len().is_multiple_of(cols) {
        return Err(Error::shape(
            what,
            "x",
            format!("a whole number of rows of {cols} values"),
            format!("{} values", x.len()),
        ));
    }
    let rows = x.len() / cols;
    if clusters == 0 {
        return Err(Error::invalid(what, "0 clusters: at least one is needed"));
    }
    if clusters > rows {
        return Err(Error::invalid(
            what,
            format!("{clusters} clusters for {rows} rows: there cannot be more clusters than rows"),
        ));
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: format!("{what}: row {} column {}", index / cols, index % cols),
            index,
            value: x[index],
        });
    }
    Ok(rows)
}

/// k-means++ seeding (Arthur & Vassilvitskii 2007): the first centroid a uniform row,
/// each next one a row drawn with probability proportional to its squared distance
/// to the nearest centroid so far. Where every row sits on a centroid already (fewer
/// distinct rows than clusters), a uniform row: a duplicate centroid, whose cluster
/// then stays empty (ties go to the lower index).
pub fn kmeans_plus_plus(x: &[f32], cols: usize, clusters: usize, seed: u64) -> Result<Vec<f32>> {
    let rows = check_points("k-means++ seeding", x, cols, clusters)?;
    let mut rng = Rng::new(seed);
    let row = |r: usize| &x[r * cols..(r + 1) * cols];
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
            .sum()
    };
    let first = rng.below(rows as u64) as usize;
    let mut centroids = row(first).to_vec();
    let mut nearest: Vec<f64> = (0..rows).map(|r| dist(row(r), row(first))).collect();
    for _ in 1..clusters {
        let total: f64 = nearest.iter().sum();
        let pick = if total > 0.0 {
            let target = rng.unit() * total;
            let mut sum = 0.0;
            // The first row whose running sum passes the target; rounding can leave
            // the target at the very end, so the last row with weight stands by.
            let last = nearest.iter().rposition(|&d| d > 0.0).unwrap_or(0);
            nearest
                .iter()
                .position(|&d| {
                    sum += d;
                    d > 0.0 && sum > target
                })
                .unwrap_or(last)
        } else {
            rng.below(rows as u64) as usize
        };
        let chosen = row(pick).to_vec();
        for (r, d) in nearest.iter_mut().enumerate() {
            *d = d.min(dist(row(r), &chosen));
        }
        centroids.extend_from_slice(&chosen);
    }
    Ok(centroids)
}

/// The GPU buffers of one k-means problem.
struct Buffers {
    x: wgpu::Buffer,
    centroids: [wgpu::Buffer; 2],
    assignment: wgpu::Buffer,
    distance: wgpu::Buffer,
    partial: wgpu::Buffer,
    counts: wgpu::Buffer,
}

impl Buffers {
    fn new(gpu: &Gpu, shape: &KMeansShape, x: &[f32], centroids: &[f32]) -> Result<Buffers> {
        let bytes = |n: usize| 4 * n as u64;
        Ok(Buffers {
            x: gpu.upload("k-means points", x)?,
            centroids: [
                gpu.upload("k-means centroids", centroids)?,
                gpu.storage_buffer("k-means centroids", bytes(shape.centroids_len()))?,
            ],
            assignment: gpu.storage_buffer("k-means assignment", bytes(shape.rows))?,
            distance: gpu.storage_buffer("k-means distance", bytes(shape.rows))?,
            partial: gpu.storage_buffer("k-means partial sums", bytes(shape.partial_len()))?,
            counts: gpu.storage_buffer("k-means counts", bytes(shape.clusters))?,
        })
    }

    fn assign(&self, shape: KMeansShape, current: usize) -> KMeansAssign<'_> {
        KMeansAssign {
            shape,
            x: BufferView::new(&self.x),
            centroids: BufferView::new(&self.centroids[current]),
            assignment: BufferView::new(&self.assignment),
            distance: BufferView::new(&self.distance),
        }
    }
}

/// Partitions the rows of `x` (`[rows, cols]`, row-major) into `clusters` clusters:
/// k-means++ seeding from `seed`, then at most `iterations` Lloyd iterations on `gpu`,
/// stopping at the first that moves no row. The same input and seed give the same
/// bits on a device.
///
/// Errors, naming the problem: no columns, a length not a whole number of rows, no
/// clusters or more clusters than rows, a non-finite value (with its row and column),
/// `iterations` of 0.
pub fn kmeans(
    gpu: &Gpu,
    x: &[f32],
    cols: usize,
    clusters: usize,
    iterations: usize,
    seed: u64,
) -> Result<Clustering> {
    const CTX: &str = "k-means";
    let rows = check_points(CTX, x, cols, clusters)?;
    if iterations == 0 {
        return Err(Error::invalid(CTX, "0 iterations: at least one is needed"));
    }
    let shape = KMeansShape {
        rows,
        cols,
        clusters,
    };
    shape.validate(CTX)?;
    let start = kmeans_plus_plus(x, cols, clusters, seed)?;
    let buffers = Buffers::new(gpu, &shape, x, &start)?;
    let kernels = KMeans::new(gpu);
    let mut current = 0;
    let mut previous: Option<Vec<u32>> = None;
    let mut converged = false;
    let mut run = 0;
    while run < iterations {
        run += 1;
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        kernels.encode_assign(&mut encoder, &buffers.assign(shape, current))?;
        kernels.encode_update(
            &mut encoder,
            &KMeansUpdate {
                shape,
                x: BufferView::new(&buffers.x),
                assignment: BufferView::new(&buffers.assignment),
                centroids: BufferView::new(&buffers.centroids[current]),
                partial: BufferView::new(&buffers.partial),
                updated: BufferView::new(&buffers.centroids[1 - current]),
                counts: BufferView::new(&buffers.counts),
            },
        )?;
        gpu.queue().submit([encoder.finish()]);
        let assignment: Vec<u32> = gpu.read(&buffers.assignment, 0, rows)?;
        // The same rows as last time: the means just computed are the centroids the
        // assignment was measured against, bit for bit.
        if previous.as_ref() == Some(&assignment) {
            converged = true;
            break;
        }
        previous = Some(assignment);
        current = 1 - current;
    }
    if !converged {
        // The last update moved the centroids: assign against them.
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        kernels.encode_assign(&mut encoder, &buffers.assign(shape, current))?;
        gpu.queue().submit([encoder.finish()]);
    }
    let assignment: Vec<u32> = gpu.read(&buffers.assignment, 0, rows)?;
    let distance: Vec<f32> = gpu.read(&buffers.distance, 0, rows)?;
    let centroids: Vec<f32> = gpu.read(&buffers.centroids[current], 0, shape.centroids_len())?;
    let mut counts = vec![0; clusters];
    for &a in &assignment {
        counts[a as usize] += 1;
    }
    Ok(Clustering {
        cols,
        centroids,
        assignment,
        counts,
        inertia: distance.iter().map(|&d| d as f64).sum(),
        iterations: run,
        converged,
    })
}

/// Each row of `x` (`[rows, cols]`) assigned to its nearest centroid of `centroids`
/// (`[clusters, cols]`, no more than the rows), on `gpu`: the cluster (ties to the
/// lowest index).
pub fn nearest_centroids(gpu: &Gpu, x: &[f32], cols: usize, centroids: &[f32]) -> Result<Vec<u32>> {
    const CTX: &str = "nearest centroids";
    let clusters = centroids.len() / cols.max(1);
    check_points("nearest centroids: centroids", centroids, cols, 1)?;
    let rows = check_points(CTX, x, cols, clusters)?;
    let shape = KMeansShape {
        rows,
        cols,
        clusters,
    };
    let x_buffer = gpu.upload("points", x)?;
    let c_buffer = gpu.upload("centroids", centroids)?;
    let assignment = gpu.storage_buffer("assignment", 4 * rows as u64)?;
    let distance = gpu.storage_buffer("distance", 4 * rows as u64)?;
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    KMeans::new(gpu).encode_assign(
        &mut encoder,
        &KMeansAssign {
            shape,
            x: BufferView::new(&x_buffer),
            centroids: BufferView::new(&c_buffer),
            assignment: BufferView::new(&assignment),
            distance: BufferView::new(&distance),
        },
    )?;
    gpu.queue().submit([encoder.finish()]);
    gpu.read(&assignment, 0, rows)
}
