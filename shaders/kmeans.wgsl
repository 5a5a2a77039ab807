// k-means (Lloyd's algorithm): the assignment step and the centroid update.
//
// Layouts, row-major, all f32 (u32 where said):
//   x           [rows, cols]        the points
//   centroids   [clusters, cols]    the centroids the assignment measures against, and
//                                   the old centroids the update keeps for an empty cluster
//   assignment  [rows] u32          the nearest centroid of each row
//   distance    [rows]              its squared distance, max(‖x‖² − 2·x·c + ‖c‖², 0)
//   partial     [chunks, clusters, cols + 1]
//                                   per chunk of CHUNK_ROWS rows, each cluster's column
//                                   sums, then its row count (as f32, exact below 2^24)
//   updated     [clusters, cols]    the new centroids
//   counts      [clusters] u32      rows per cluster
//
// Assignment (entry `assign`): the score of cluster c for row x is ‖c‖² − 2·x·c, the
// squared distance less ‖x‖², which is the same for every cluster of the row; so the
// arg-min needs only the GEMM x·cᵀ and the centroids' norms. Each invocation takes 4
// consecutive rows against 4 clusters at a time (a 4 × 4 register tile: 8 loads per
// 16 fmas, where one row against one cluster would load 2 values per fma), its
// accumulators in vec4s (a private array indexed by a loop counter is slow on
// lavapipe). Clusters are scanned in ascending order and only a strictly smaller score
// replaces the best, so a tie goes to the lowest index. Rows and clusters past the end
// are read clamped and never written or chosen.
//
// Update, two dispatches of fixed shape, no atomics, so the centroids are bitwise the
// same on every run and every device:
//   `partial_sums`: one invocation per (column or count, block of 4 clusters, chunk)
//     scans its chunk's rows in order, adding each row's value to the lane of its
//     cluster (a select, so a row adds 0 to the other lanes);
//   `centroids_from_sums`: one invocation per (column, cluster) adds the chunks' partial sums in
//     chunk order and divides by the count. An empty cluster keeps its old centroid.
// The chunk length is fixed (CHUNK_ROWS in the host): it sets the order of the sums,
// so it is not a tuning choice. The loop budget of one invocation bounds it and the
// number of chunks (the host checks).

struct KMeansParams {
    rows: u32,
    cols: u32,
    clusters: u32,
    chunk_rows: u32,
    chunks: u32,
    // Element offsets of each operand inside its binding.
    x_base: u32,
    centroid_base: u32,
    assignment_base: u32,
    distance_base: u32,
    partial_base: u32,
    updated_base: u32,
    count_base: u32,
}

@group(0) @binding(0) var<uniform> P: KMeansParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> centroids: array<f32>;
@group(0) @binding(3) var<storage, read_write> assignment_out: array<u32>;
@group(0) @binding(4) var<storage, read_write> distance: array<f32>;
@group(0) @binding(5) var<storage, read> assignment_in: array<u32>;
@group(0) @binding(6) var<storage, read_write> partial_out: array<f32>;
@group(0) @binding(7) var<storage, read> partial_in: array<f32>;
@group(0) @binding(8) var<storage, read_write> updated: array<f32>;
@group(0) @binding(9) var<storage, read_write> counts: array<u32>;

// Invocations per workgroup (along x).
override WG: u32 = 64u;

const NONE: u32 = 0xffffffffu;

struct Best {
    score: f32,
    index: u32,
}

// `best`, or the first of the 4 clusters c0 .. c0 + 3 (those that exist) whose score
// is strictly smaller, in ascending order: ties keep the lower index. Unrolled, since
// every loop iteration counts against lavapipe's budget.
fn pick(best: Best, score: vec4<f32>, c0: u32) -> Best {
    var b = best;
    if (c0 < P.clusters && (b.index == NONE || score.x < b.score)) {
        b = Best(score.x, c0);
    }
    if (c0 + 1u < P.clusters && score.y < b.score) {
        b = Best(score.y, c0 + 1u);
    }
    if (c0 + 2u < P.clusters && score.z < b.score) {
        b = Best(score.z, c0 + 2u);
    }
    if (c0 + 3u < P.clusters && score.w < b.score) {
        b = Best(score.w, c0 + 3u);
    }
    return b;
}

fn write_row(row: u32, best: Best, norm: f32) {
    if (row < P.rows) {
        assignment_out[P.assignment_base + row] = best.index;
        distance[P.distance_base + row] = max(norm + best.score, 0.0);
    }
}

@compute @workgroup_size(WG)
fn assign(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r0 = gid.x * 4u;
    if (r0 >= P.rows) {
        return;
    }
    let last_row = P.rows - 1u;
    let last = P.clusters - 1u;
    let x0 = P.x_base + min(r0, last_row) * P.cols;
    let x1 = P.x_base + min(r0 + 1u, last_row) * P.cols;
    let x2 = P.x_base + min(r0 + 2u, last_row) * P.cols;
    let x3 = P.x_base + min(r0 + 3u, last_row) * P.cols;
    var b0 = Best(0.0, NONE);
    var b1 = Best(0.0, NONE);
    var b2 = Best(0.0, NONE);
    var b3 = Best(0.0, NONE);
    var norms = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < P.clusters; c0 += 4u) {
        let k0 = P.centroid_base + min(c0, last) * P.cols;
        let k1 = P.centroid_base + min(c0 + 1u, last) * P.cols;
        let k2 = P.centroid_base + min(c0 + 2u, last) * P.cols;
        let k3 = P.centroid_base + min(c0 + 3u, last) * P.cols;
        var a0 = vec4<f32>(0.0);
        var a1 = vec4<f32>(0.0);
        var a2 = vec4<f32>(0.0);
        var a3 = vec4<f32>(0.0);
        var cn = vec4<f32>(0.0);
        var xn = vec4<f32>(0.0);
        for (var j = 0u; j < P.cols; j++) {
            let c = vec4(centroids[k0 + j], centroids[k1 + j], centroids[k2 + j], centroids[k3 + j]);
            let v = vec4(x[x0 + j], x[x1 + j], x[x2 + j], x[x3 + j]);
            a0 = fma(vec4(v.x), c, a0);
            a1 = fma(vec4(v.y), c, a1);
            a2 = fma(vec4(v.z), c, a2);
            a3 = fma(vec4(v.w), c, a3);
            cn = fma(c, c, cn);
            xn = fma(v, v, xn);
        }
        // The same sums in every block; kept from the last.
        norms = xn;
        b0 = pick(b0, cn - 2.0 * a0, c0);
        b1 = pick(b1, cn - 2.0 * a1, c0);
        b2 = pick(b2, cn - 2.0 * a2, c0);
        b3 = pick(b3, cn - 2.0 * a3, c0);
    }
    write_row(r0, b0, norms.x);
    write_row(r0 + 1u, b1, norms.y);
    write_row(r0 + 2u, b2, norms.z);
    write_row(r0 + 3u, b3, norms.w);
}

// gid.x: column (cols = the count), gid.y: block of 4 clusters, gid.z: chunk.
@compute @workgroup_size(WG)
fn partial_sums(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if (col > P.cols) {
        return;
    }
    let c0 = gid.y * 4u;
    let chunk = gid.z;
    let first = chunk * P.chunk_rows;
    let end = min(first + P.chunk_rows, P.rows);
    let lanes = vec4(c0, c0 + 1u, c0 + 2u, c0 + 3u);
    let is_count = col == P.cols;
    let read_col = min(col, P.cols - 1u);
    var sum = vec4<f32>(0.0);
    for (var row = first; row < end; row++) {
        let a = assignment_in[P.assignment_base + row];
        let v = select(x[P.x_base + row * P.cols + read_col], 1.0, is_count);
        sum += select(vec4(0.0), vec4(v), vec4(a) == lanes);
    }
    let stride = P.cols + 1u;
    let at = P.partial_base + chunk * P.clusters * stride + col;
    for (var i = 0u; i < 4u; i++) {
        if (c0 + i < P.clusters) {
            partial_out[at + (c0 + i) * stride] = sum[i];
        }
    }
}

// gid.x: column, gid.y: cluster.
@compute @workgroup_size(WG)
fn centroids_from_sums(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let cluster = gid.y;
    if (col >= P.cols || cluster >= P.clusters) {
        return;
    }
    let stride = P.cols + 1u;
    var sum = 0.0;
    var count = 0u;
    for (var chunk = 0u; chunk < P.chunks; chunk++) {
        let at = P.partial_base + (chunk * P.clusters + cluster) * stride;
        sum += partial_in[at + col];
        count += u32(partial_in[at + P.cols]);
    }
    let out = P.updated_base + cluster * P.cols + col;
    if (count == 0u) {
        updated[out] = centroids[P.centroid_base + cluster * P.cols + col];
    } else {
        updated[out] = sum / f32(count);
    }
    if (col == 0u) {
        counts[P.count_base + cluster] = count;
    }
}
