// Embedding lookups pooled into the model's input rows, the gradient of the table
// rows a batch touched, and sparse optimizer steps on those rows. f32 throughout.
//
// Layouts, row-major, every operand at its `_base` element inside its binding:
//   table           [vocab, dim], or one row chunk of it: rows chunk_lo .. chunk_lo + chunk_rows
//   ids             [ids] u32: the flat ID list, bag after bag; an ID ≥ vocab is skipped
//   offsets         [rows + 1] u32: row r's bag is ids[offsets[r] .. offsets[r + 1]] (MULTI)
//   weights         [ids] f32 (WEIGHTED)
//   x, dx           [rows, width]: the field's columns are column .. column + dim
//   scratch         [ids, dim]: table rows gathered in ID-list order (a chunked table)
//   unique_ids      [unique] u32, ascending, padded with IDs ≥ vocab
//   unique_offsets  [unique + 1] u32 into the occurrences
//   occurrences     [ids] pairs (position in ids, row), ascending position per ID
//   grad            [unique, dim]: the gradient of table row unique_ids[u]
//
// Entry points. One invocation per item (row, ID or unique ID) and group of COLS
// columns; every output value is written by one invocation that sums in a fixed order,
// so results are bitwise the same on every run and for every WG and COLS (no atomics).
//   pool      x[r, column + c] = Σ_k w_k · src[row_k, c] over row r's bag, ÷ its size
//             (MEAN); src is the table (row_k = ids[k]) or, GATHERED, the scratch
//             (row_k = k), the same values, so a chunked table pools bitwise alike
//   gather    scratch[k, c] = table[ids[k] − chunk_lo, c] for the IDs in the chunk
//   backward  grad[u, c] = Σ_occurrences w_pos (÷ the bag's size: MEAN) · dx[row, column + c],
//             added to what grad holds (ACCUMULATE: fields sharing a table, in field order)
//   adam, adagrad   the sparse step on the chunk's touched rows; GUARDED, none once
//             status[0] != 0 (the dense optimizer's non-finite-loss flag)
//   scatter   dense[unique_ids[u] − chunk_lo, c] = grad[u, c]: a table-shaped gradient
//
// Bounds: whatever the index buffers hold, every access stays inside its operand.
// Offsets are clamped to the ID list, IDs outside the vocabulary (or the chunk) are
// skipped, occurrences outside the ID list or the rows are skipped, and the loops end
// after longest_bag or most_occurrences passes, the bounds the host held to lavapipe's
// loop budget.

struct EmbeddingParams {
    vocab: u32,
    dim: u32,
    rows: u32,
    width: u32,
    column: u32,
    // Capacities: elements of ids, and of unique_ids.
    ids: u32,
    unique: u32,
    longest_bag: u32,
    most_occurrences: u32,
    // Groups of COLS columns per item, items in the dispatch, and workgroups along x
    // (the rest go along y).
    groups: u32,
    items: u32,
    groups_x: u32,
    // The table rows this dispatch's chunk holds.
    chunk_lo: u32,
    chunk_rows: u32,
    ids_base: u32,
    offsets_base: u32,
    weights_base: u32,
    src_base: u32,
    dst_base: u32,
    dx_base: u32,
    unique_ids_base: u32,
    unique_offsets_base: u32,
    occurrences_base: u32,
    grad_base: u32,
    m_base: u32,
    v_base: u32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    status_base: u32,
}

// Rewritten by the host before each optimizer step.
struct SparseStepParams {
    // 1-based; 0 leaves everything untouched.
    step: u32,
    // lr · sqrt(1 − β2^t) / (1 − β1^t) (lazy Adam) or lr (Adagrad), from f64.
    step_size: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: EmbeddingParams;
@group(0) @binding(1) var<uniform> S: SparseStepParams;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
// The table (chunk) read by pool and gather, or the scratch pool reads when GATHERED.
@group(0) @binding(5) var<storage, read> src: array<f32>;
// What a pass writes: x (pool), scratch (gather), grad (backward), the table chunk
// (adam, adagrad) or the dense gradient's chunk (scatter).
@group(0) @binding(6) var<storage, read_write> dst: array<f32>;
@group(0) @binding(7) var<storage, read> dx: array<f32>;
@group(0) @binding(8) var<storage, read> unique_ids: array<u32>;
@group(0) @binding(9) var<storage, read> unique_offsets: array<u32>;
@group(0) @binding(10) var<storage, read> occurrences: array<u32>;
@group(0) @binding(11) var<storage, read> grad: array<f32>;
// Lazy Adam's first moment, or Adagrad's accumulator.
@group(0) @binding(12) var<storage, read_write> moment1: array<f32>;
// Lazy Adam's second moment.
@group(0) @binding(13) var<storage, read_write> moment2: array<f32>;
// The non-finite-loss status the dense optimizer step writes (GUARDED).
@group(0) @binding(14) var<storage, read> status: array<u32>;

override WG: u32 = 64u;
// Columns per invocation, 1..=4: the ID, weight and offsets loaded once serve them all.
override COLS: u32 = 4u;
// Modes, 0 or 1, as pipeline constants so that a pipeline carries only its own code.
override MULTI: u32 = 1u;
override WEIGHTED: u32 = 1u;
override MEAN: u32 = 1u;
override GATHERED: u32 = 0u;
override ACCUMULATE: u32 = 0u;
override GUARDED: u32 = 0u;

struct Cell {
    item: u32,
    // The first of the invocation's columns.
    c: u32,
    live: bool,
}

fn cell(wid: vec3<u32>, lid: u32) -> Cell {
    let i = (wid.y * P.groups_x + wid.x) * WG + lid;
    let item = i / P.groups;
    return Cell(item, (i - item * P.groups) * COLS, item < P.items);
}

// Row r's bag as [start, end) in the ID list, clamped to it and to longest_bag IDs.
fn bag_of(r: u32) -> vec2<u32> {
    if (MULTI == 0u) {
        return vec2<u32>(r, min(r + 1u, P.ids));
    }
    let start = min(offsets[P.offsets_base + r], P.ids);
    let end = clamp(offsets[P.offsets_base + r + 1u], start, min(P.ids, start + P.longest_bag));
    return vec2<u32>(start, end);
}

fn weight(k: u32) -> f32 {
    if (WEIGHTED == 0u) {
        return 1.0;
    }
    return weights[P.weights_base + k];
}

// Columns c .. c + COLS of the src row starting at `at`. A column past the last reads
// the last one (inside the row), and is never stored.
fn src_cols(at: u32, c: u32) -> vec4<f32> {
    let last = P.dim - 1u;
    var v = vec4<f32>(src[at + c], 0.0, 0.0, 0.0);
    if (COLS > 1u) {
        v.y = src[at + min(c + 1u, last)];
    }
    if (COLS > 2u) {
        v.z = src[at + min(c + 2u, last)];
    }
    if (COLS > 3u) {
        v.w = src[at + min(c + 3u, last)];
    }
    return v;
}

fn dx_cols(at: u32, c: u32) -> vec4<f32> {
    let last = P.dim - 1u;
    var v = vec4<f32>(dx[at + c], 0.0, 0.0, 0.0);
    if (COLS > 1u) {
        v.y = dx[at + min(c + 1u, last)];
    }
    if (COLS > 2u) {
        v.z = dx[at + min(c + 2u, last)];
    }
    if (COLS > 3u) {
        v.w = dx[at + min(c + 3u, last)];
    }
    return v;
}

fn dst_cols(at: u32, c: u32) -> vec4<f32> {
    let last = P.dim - 1u;
    var v = vec4<f32>(dst[at + c], 0.0, 0.0, 0.0);
    if (COLS > 1u) {
        v.y = dst[at + min(c + 1u, last)];
    }
    if (COLS > 2u) {
        v.z = dst[at + min(c + 2u, last)];
    }
    if (COLS > 3u) {
        v.w = dst[at + min(c + 3u, last)];
    }
    return v;
}

fn store_cols(at: u32, c: u32, v: vec4<f32>) {
    dst[at + c] = v.x;
    if (COLS > 1u && c + 1u < P.dim) {
        dst[at + c + 1u] = v.y;
    }
    if (COLS > 2u && c + 2u < P.dim) {
        dst[at + c + 2u] = v.z;
    }
    if (COLS > 3u && c + 3u < P.dim) {
        dst[at + c + 3u] = v.w;
    }
}

// The row of this dispatch's table chunk holding table row `id`, or chunk_rows when
// the chunk does not hold it (IDs ≥ vocab included: chunks lie inside the table).
fn chunk_row(id: u32) -> u32 {
    if (id < P.chunk_lo || id - P.chunk_lo >= P.chunk_rows) {
        return P.chunk_rows;
    }
    return id - P.chunk_lo;
}

@compute @workgroup_size(WG)
fn pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = cell(wid, lid);
    if (!at.live) {
        return;
    }
    let bag = bag_of(at.item);
    var acc = vec4<f32>();
    for (var k = bag.x; k < bag.y; k++) {
        let id = ids[P.ids_base + k];
        if (id >= P.vocab) {
            continue;
        }
        let row = select(id, k, GATHERED != 0u);
        acc = fma(vec4<f32>(weight(k)), src_cols(P.src_base + row * P.dim, at.c), acc);
    }
    if (MEAN != 0u && bag.y > bag.x) {
        acc = acc / f32(bag.y - bag.x);
    }
    store_cols(P.dst_base + at.item * P.width + P.column, at.c, acc);
}

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = cell(wid, lid);
    if (!at.live) {
        return;
    }
    let row = chunk_row(ids[P.ids_base + at.item]);
    if (row == P.chunk_rows) {
        return;
    }
    store_cols(P.dst_base + at.item * P.dim, at.c, src_cols(P.src_base + row * P.dim, at.c));
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = cell(wid, lid);
    if (!at.live) {
        return;
    }
    let first = P.unique_offsets_base + at.item;
    let start = min(unique_offsets[first], P.ids);
    let end = clamp(unique_offsets[first + 1u], start, min(P.ids, start + P.most_occurrences));
    var acc = vec4<f32>();
    for (var j = start; j < end; j++) {
        let pos = occurrences[P.occurrences_base + 2u * j];
        let row = occurrences[P.occurrences_base + 2u * j + 1u];
        if (pos >= P.ids || row >= P.rows) {
            continue;
        }
        var coefficient = weight(pos);
        if (MEAN != 0u) {
            let bag = bag_of(row);
            coefficient = coefficient / f32(max(bag.y - bag.x, 1u));
        }
        let upstream = dx_cols(P.dx_base + row * P.width + P.column, at.c);
        acc = fma(vec4<f32>(coefficient), upstream, acc);
    }
    if (ACCUMULATE != 0u) {
        acc = dst_cols(P.dst_base + at.item * P.dim, at.c) + acc;
    }
    store_cols(P.dst_base + at.item * P.dim, at.c, acc);
}

// Whether a sparse step must change nothing: no step number yet, or (GUARDED) a loss
// went non-finite at this step or an earlier one.
fn skip_step() -> bool {
    return S.step == 0u || (GUARDED != 0u && status[P.status_base] != 0u);
}

// Whether the invocation's column j (of COLS) lies inside the row.
fn column_live(at: Cell, j: u32) -> bool {
    return j < COLS && at.c + j < P.dim;
}

@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = cell(wid, lid);
    if (!at.live || skip_step()) {
        return;
    }
    let row = chunk_row(unique_ids[P.unique_ids_base + at.item]);
    if (row == P.chunk_rows) {
        return;
    }
    for (var j = 0u; column_live(at, j); j++) {
        let e = row * P.dim + at.c + j;
        let g = grad[P.grad_base + at.item * P.dim + at.c + j];
        let m = P.beta1 * moment1[P.m_base + e] + P.one_minus_beta1 * g;
        let v = P.beta2 * moment2[P.v_base + e] + P.one_minus_beta2 * (g * g);
        moment1[P.m_base + e] = m;
        moment2[P.v_base + e] = v;
        dst[P.dst_base + e] = dst[P.dst_base + e] - S.step_size * m / (sqrt(v) + P.eps);
    }
}

@compute @workgroup_size(WG)
fn adagrad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = cell(wid, lid);
    if (!at.live || skip_step()) {
        return;
    }
    let row = chunk_row(unique_ids[P.unique_ids_base + at.item]);
    if (row == P.chunk_rows) {
        return;
    }
    for (var j = 0u; column_live(at, j); j++) {
        let e = row * P.dim + at.c + j;
        let g = grad[P.grad_base + at.item * P.dim + at.c + j];
        let sum = moment1[P.m_base + e] + g * g;
        moment1[P.m_base + e] = sum;
        dst[P.dst_base + e] = dst[P.dst_base + e] - S.step_size * g / (sqrt(sum) + P.eps);
    }
}

@compute @workgroup_size(WG)
fn scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = cell(wid, lid);
    if (!at.live) {
        return;
    }
    let row = chunk_row(unique_ids[P.unique_ids_base + at.item]);
    if (row == P.chunk_rows) {
        return;
    }
    for (var j = 0u; column_live(at, j); j++) {
        dst[P.dst_base + row * P.dim + at.c + j] = grad[P.grad_base + at.item * P.dim + at.c + j];
    }
}
