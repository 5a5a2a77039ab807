// Grouped GEMM: Y_g = act(X_g · W_g + b_g) for every group g in one dispatch, and its
// backward pass.
//
// Layouts, row-major, stored as `Elem` (f32 or f16, set by the storage_*.wgsl file
// compiled with this one; all arithmetic is f32):
//   X  [rows, inputs] shared by all groups, [groups, rows, inputs], or the blocks of
//      an extraction level [tasks + 1, rows, inputs] (blocks x_group_stride apart):
//      groups 0..x_shared read block x_tasks, group x_shared + t·x_own + i block t.
//      Shared is {x_tasks 0, x_shared groups, x_own 0}, per group {groups, 0, 1}.
//      Or column windows of one X [rows, x_columns] (P.windows > 0): group g reads
//      columns offset_g .. offset_g + width_g, multiplied by rows 0..width_g of W_g
//      (the rows past width_g are padding: never read, their gradient zero).
//   W  [groups, inputs, outputs]    b [groups, outputs]    Y, dY [groups, rows, outputs]
//   dX like X (each block summed over the groups reading it; with windows each
//      column over the groups whose window holds it)    dW like W    db like b
//
// Every output is one sequential fma chain over its reduction index, starting from +0
// and masked terms contributing fma(0, 0, acc) == acc. All entry points of this family
// (naive here, tiled in grouped_gemm_subgroup.wgsl) therefore give bitwise identical
// results, whichever the autotuner picks.
//
// Bounds are handled here: row and column indices are clamped for loads (the values
// of clamped lanes are never stored) and reduction indices past the end load zero.
//
// Ragged mode (RAGGED = 1): group g only computes the rows a row map routes to it.
// The map (`routes`, u32, written by routing.wgsl) is
//   routes[g]                    count_g, the rows routed to group g
//   routes[groups + g·rows + s]  slot s of g's list: the routed rows (s < count_g),
//                                then the others
// The kernels run over slots instead of rows: slot s stands for row map[g][s], in X,
// Y, dY and dX alike. The forward writes exact zeros to the rows past count_g; the
// weight gradients sum over slots 0..count_g in slot order. The input gradient runs
// one group per workgroup whatever the layout, and stores by FLAG_COMPACT_DX:
//   off (X per group): dX_g[map[g][s]] for s < count_g; exact zeros to the other rows
//       (with FLAG_ACCUMULATE, which adds dZ·Wᵀ, it leaves them as they were: their
//       dZ is zero);
//   on (X shared): row slot_base(g) + s of the f32 scratch `dx_slots` for s < count_g,
//       nothing else; grouped_gemm_reduce.wgsl then sums each row's groups into dX.
// With every row routed (count_g = rows, map[g][s] = s) each output is the same fma
// chain as the dense pass's, bit for bit (a compact row: as the per-group dense dX's).
// Packing groups (FLAG_PACK_GROUPS) is never combined with it: a workgroup then holds
// one group, so its count, and every loop bound, is uniform.

struct GemmParams {
    groups: u32,
    rows: u32,
    inputs: u32,
    outputs: u32,
    // Elements between consecutive groups of X and dX; 0 when X is shared.
    x_group_stride: u32,
    // 0: identity, 1: relu.
    activation: u32,
    // FLAG_BIAS (forward adds b), FLAG_ACCUMULATE (backward_input adds into dX),
    // FLAG_PACK_GROUPS (tiled kernels: columns run over all groups, see column_of),
    // FLAG_DB_APART (tiled weight gradients: db from its own accumulators, not a row).
    flags: u32,
    // Element offsets of each operand inside its binding (bindings start at the
    // device's offset alignment, operands anywhere after it).
    x_base: u32,
    w_base: u32,
    b_base: u32,
    y_base: u32,
    dy_base: u32,
    dx_base: u32,
    dw_base: u32,
    db_base: u32,
    // Element offset of the row map inside its binding (ragged mode).
    routes_base: u32,
    // FLAG_COMPACT_DX: element offset of the scratch inside its binding, and the rows
    // it holds (stores past them are dropped: the map is the caller's data).
    slots_base: u32,
    slots: u32,
    // Which block of X each group reads (see Layouts).
    x_tasks: u32,
    x_shared: u32,
    x_own: u32,
    // Elements of a row of X and dX: inputs, or the columns windows read from.
    x_columns: u32,
    // Column windows (0: none): runs of consecutive groups, each (first group,
    // first column, width, unused).
    windows: u32,
    _pad0: u32,
    window: array<vec4<u32>, 8>,
}

const FLAG_BIAS: u32 = 1u;
const FLAG_ACCUMULATE: u32 = 2u;
const FLAG_PACK_GROUPS: u32 = 4u;
const FLAG_COMPACT_DX: u32 = 16u;
const FLAG_DB_APART: u32 = 32u;
const ACT_RELU: u32 = 1u;

@group(0) @binding(0) var<uniform> P: GemmParams;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read> w: array<Elem>;
@group(0) @binding(3) var<storage, read> bias: array<Elem>;
@group(0) @binding(4) var<storage, read_write> y: array<Elem>;
@group(0) @binding(5) var<storage, read> dy: array<Elem>;
// The forward output Y, read by the backward pass for the activation's derivative.
@group(0) @binding(6) var<storage, read> y_saved: array<Elem>;
@group(0) @binding(7) var<storage, read_write> dx: array<Elem>;
@group(0) @binding(8) var<storage, read_write> dw: array<Elem>;
@group(0) @binding(9) var<storage, read_write> db: array<Elem>;
// The row map of ragged mode; in a dense pass, a stand-in that is never read.
@group(0) @binding(10) var<storage, read> routes: array<u32>;
// Ragged input gradient on a shared X (FLAG_COMPACT_DX): each group's rows, compact,
// in f32 whatever `Elem` is, so the reduce rounds once. Otherwise a stand-in.
@group(0) @binding(11) var<storage, read_write> dx_slots: array<f32>;

// Invocations per workgroup along the output columns (tiled kernels: a multiple of 8).
override WG: u32 = 8u;
// Naive kernels: invocations per workgroup along the output rows.
override WG_ROWS: u32 = 8u;
// Tiled kernels: blocks of 8 output rows per workgroup (1..=8).
override RB: u32 = 4u;
// Tiled kernels: groups of 4 output columns per invocation (1 or 2).
override CN: u32 = 1u;
// Ragged mode (1) or dense (0). A pipeline constant rather than a flag, so that a
// dense pipeline holds none of the ragged map lookups and masked stores: in the input
// gradient's epilogue they doubled lavapipe's compile time and slowed the kernel.
override RAGGED: u32 = 0u;

// ---------------------------------------------------------------- element access

// What group g reads of each row of X: columns from `first` on (counted from row
// 0 of its block in the binding), `width` of them.
struct XWindow {
    first: u32,
    width: u32,
}

// The columns group g reads of a row: (0, inputs) without windows; clamped into the
// row, so a malformed window reads wrong columns, never past the row.
fn window_of(g: u32) -> XWindow {
    if (P.windows == 0u) {
        return XWindow(0u, P.inputs);
    }
    var at = P.window[0];
    for (var i = 1u; i < min(P.windows, 8u); i++) {
        if (g >= P.window[i].x) {
            at = P.window[i];
        }
    }
    let first = min(at.y, P.x_columns);
    return XWindow(first, min(at.z, min(P.inputs, P.x_columns - first)));
}

// Where group g's reads of X start, and how many columns: worked out once per
// kernel, outside the reduction loops (a division by a runtime value is lane by lane
// on CPU drivers).
fn x_offset(g: u32) -> XWindow {
    var block = P.x_tasks;
    if (g >= P.x_shared) {
        block = (g - P.x_shared) / max(P.x_own, 1u);
    }
    let w = window_of(g);
    return XWindow(P.x_base + block * P.x_group_stride + w.first, w.width);
}

// X[row, k] of what group reads from xo (from x_offset); k below its width.
fn x_at(xo: XWindow, row: u32, k: u32) -> f32 {
    return f32(x[xo.first + row * P.x_columns + k]);
}

fn w_at(g: u32, k: u32, col: u32) -> f32 {
    return f32(w[P.w_base + (g * P.inputs + k) * P.outputs + col]);
}

fn act(v: f32) -> f32 {
    if (P.activation == ACT_RELU) {
        return max(v, 0.0);
    }
    return v;
}

// ---------------------------------------------------------------- ragged mode
// The map comes from the caller's buffer, so counts and rows are clamped: a malformed
// map gives wrong numbers, never an access out of bounds.

// Slots of group g that hold a product: every row when dense.
fn live_slots(g: u32) -> u32 {
    if (RAGGED == 0u) {
        return P.rows;
    }
    return min(routes[P.routes_base + g], P.rows);
}

fn mapped_row(g: u32, s: u32) -> u32 {
    let at = P.routes_base + P.groups + g * P.rows + min(s, P.rows - 1u);
    return min(routes[at], P.rows - 1u);
}

// The row in slot s of group g's list. Dense: s itself (loads clamp it later).
fn row_of(g: u32, s: u32) -> u32 {
    if (RAGGED == 0u) {
        return s;
    }
    return mapped_row(g, s);
}

// FLAG_COMPACT_DX: the scratch row of group g's slot 0, Σ_{g' < g} count_g'.
// 0 otherwise (the stores then never use it).
fn slot_base(g: u32) -> u32 {
    var base = 0u;
    if (RAGGED != 0u && (P.flags & FLAG_COMPACT_DX) != 0u) {
        for (var q = 0u; q < g; q++) {
            base += min(routes[P.routes_base + q], P.rows);
        }
    }
    return base;
}

// The input gradient's groups for a workgroup (or invocation) at index z: in a dense
// pass z is a block of X, summed over the groups that read it (all of them when X is
// shared, group z alone when per group); ragged, group z alone.
fn dx_groups(z: u32) -> vec2<u32> {
    if (RAGGED != 0u) {
        return vec2(z, z + 1u);
    }
    if (z == P.x_tasks) {
        return vec2(0u, P.x_shared);
    }
    let first = P.x_shared + z * P.x_own;
    return vec2(first, first + P.x_own);
}

// dZ = dY ⊙ act'(Y): the activation's derivative applied as dY is loaded.
fn dz_at(g: u32, row: u32, col: u32) -> f32 {
    let i = (g * P.rows + row) * P.outputs + col;
    let d = f32(dy[P.dy_base + i]);
    if (P.activation == ACT_RELU) {
        return select(0.0, d, f32(y_saved[P.y_base + i]) > 0.0);
    }
    return d;
}

// ---------------------------------------------------------------- register tiles
//
// A Tile is 8 rows × 4 columns of accumulators. Kept as named struct members (not
// arrays) so drivers keep it in registers.

struct Tile {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
    r4: vec4<f32>,
    r5: vec4<f32>,
    r6: vec4<f32>,
    r7: vec4<f32>,
}

fn tile_row(t: Tile, i: u32) -> vec4<f32> {
    switch i {
        case 0u: { return t.r0; }
        case 1u: { return t.r1; }
        case 2u: { return t.r2; }
        case 3u: { return t.r3; }
        case 4u: { return t.r4; }
        case 5u: { return t.r5; }
        case 6u: { return t.r6; }
        default: { return t.r7; }
    }
}

// ------------------------------------------------- operand fetches for the tiled kernels
// One step of a reduction each: the tiled kernels' loops advance one step at a time.
// A loop body of four steps ran no faster on lavapipe and took twice as long to
// compile (1-5 s per pipeline there, the largest part of a cold start).

// Forward, right operand: W_g[k, col..col+4].
fn w_cols(g: u32, k: u32, col: u32) -> vec4<f32> {
    let last = P.outputs - 1u;
    return vec4(
        w_at(g, k, min(col, last)),
        w_at(g, k, min(col + 1u, last)),
        w_at(g, k, min(col + 2u, last)),
        w_at(g, k, min(col + 3u, last)),
    );
}

// W_g[c - first, j] for column c of X, or 0 where c lies outside group g's window
// `win` (from window_of): an exact no-op in the fma chain.
fn wt_at(g: u32, win: XWindow, j: u32, c: u32) -> f32 {
    let k = c - win.first;
    let v = w_at(g, min(k, max(win.width, 1u) - 1u), j);
    return select(0.0, v, c >= win.first && k < win.width);
}

// Backward input, right operand: W_g[i..i+4, j], i.e. a row of W_gᵀ (columns of X
// outside the window give 0).
fn wt_cols(g: u32, win: XWindow, j: u32, i: u32) -> vec4<f32> {
    return vec4(
        wt_at(g, win, j, i),
        wt_at(g, win, j, i + 1u),
        wt_at(g, win, j, i + 2u),
        wt_at(g, win, j, i + 3u),
    );
}

// Backward weights of the naive kernel, left operand: X[row, i] of what the group
// reads from xo, where i == inputs is the all-ones column whose product gives db;
// the padding rows of a narrow window get 0, so their gradient is exactly 0.
fn x_or_one(xo: XWindow, row: u32, i: u32) -> f32 {
    return select(x_in_window(xo, row, i), 1.0, i >= P.inputs);
}

// Backward weights of the tiled kernels, which sum db apart: X[row, i] of what the
// group reads from xo, 0 past its width (padding rows, and rows past the inputs,
// which are never stored). Branch free, a clamped load and a select: the two
// branches it replaced in the reduction loop cost the weight gradient about 8% at
// census and large on lavapipe.
fn x_in_window(xo: XWindow, row: u32, i: u32) -> f32 {
    let v = x_at(xo, row, min(i, max(xo.width, 1u) - 1u));
    return select(0.0, v, i < xo.width);
}

// Backward weights, right operand: dZ_g[row, col..col+4].
fn dz_cols(g: u32, row: u32, col: u32) -> vec4<f32> {
    let last = P.outputs - 1u;
    return vec4(
        dz_at(g, row, min(col, last)),
        dz_at(g, row, min(col + 1u, last)),
        dz_at(g, row, min(col + 2u, last)),
        dz_at(g, row, min(col + 3u, last)),
    );
}

// ---------------------------------------------------------------- epilogues

// Output slot s of group g: the row it stands for, and whether it holds a product
// (ragged slots past the count hold zeros, not act(b)).
struct OutRow {
    row: u32,
    live: bool,
}

fn out_row(g: u32, s: u32) -> OutRow {
    return OutRow(row_of(g, s), s < live_slots(g));
}

fn store_forward(g: u32, s: u32, to: OutRow, col: u32, acc: f32) {
    if (s < P.rows && col < P.outputs) {
        var v = acc;
        if ((P.flags & FLAG_BIAS) != 0u) {
            v = v + f32(bias[P.b_base + g * P.outputs + col]);
        }
        let out = select(0.0, act(v), to.live);
        y[P.y_base + (g * P.rows + to.row) * P.outputs + col] = Elem(out);
    }
}

// Output slot s (a row when dense) of group g's input gradient, column i; `base` is
// slot_base(g). dX has one group when X is shared (x_group_stride == 0).
fn store_dx(g: u32, s: u32, to: OutRow, base: u32, i: u32, acc: f32) {
    if (s >= P.rows || i >= P.x_columns) {
        return;
    }
    if (RAGGED != 0u && (P.flags & FLAG_COMPACT_DX) != 0u) {
        if (to.live && base + s < P.slots) {
            dx_slots[P.slots_base + (base + s) * P.inputs + i] = acc;
        }
        return;
    }
    let at = P.dx_base + g * P.x_group_stride + to.row * P.x_columns + i;
    let accumulate = (P.flags & FLAG_ACCUMULATE) != 0u;
    if (to.live) {
        var v = acc;
        if (accumulate) {
            v = f32(dx[at]) + v;
        }
        dx[at] = Elem(v);
    } else if (!accumulate) {
        dx[at] = Elem(0.0);
    }
}

// Row i of the backward-weights result is dW_g[i, :] for i < inputs and db_g for
// i == inputs (when there is a bias and it is not stored apart; otherwise the db slot
// is a stand-in for dW).
fn store_dw(g: u32, i: u32, col: u32, acc: f32) {
    if (col >= P.outputs) {
        return;
    }
    if (i < P.inputs) {
        dw[P.dw_base + (g * P.inputs + i) * P.outputs + col] = Elem(acc);
    } else if (i == P.inputs && (P.flags & (FLAG_BIAS | FLAG_DB_APART)) == FLAG_BIAS) {
        db[P.db_base + g * P.outputs + col] = Elem(acc);
    }
}

// FLAG_DB_APART: db_g[col..col+4] from its own accumulators, summed by the first
// row block's workgroups. Σ dZ one add at a time is the fma(1, dZ, acc) chain of the
// all-ones row, bit for bit, without a row block of its own: with inputs a multiple
// of the block (512 at census), that row cost a whole extra block of 64 rows.
fn store_db_apart(g: u32, col: u32, sum: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        if (col + c < P.outputs) {
            db[P.db_base + g * P.outputs + col + c] = Elem(sum[c]);
        }
    }
}

// Rows of an 8-row tile starting at row0 that lie below limit. A loop bound read from
// the parameters also keeps the store loop rolled: unrolled, the stores of a large
// register tile are most of what lavapipe spends compiling a kernel.
fn rows_in_tile(row0: u32, limit: u32) -> u32 {
    return min(8u, limit - min(row0, limit));
}

// Tile stores, one per output kind: a kernel's bindings are the ones its functions
// mention, so each kernel must only reach its own store.
fn store_tile_forward(g: u32, row0: u32, col: u32, t: Tile) {
    var bias4 = vec4(0.0);
    if ((P.flags & FLAG_BIAS) != 0u) {
        let last = P.outputs - 1u;
        let at = P.b_base + g * P.outputs;
        bias4 = vec4(
            f32(bias[at + min(col, last)]),
            f32(bias[at + min(col + 1u, last)]),
            f32(bias[at + min(col + 2u, last)]),
            f32(bias[at + min(col + 3u, last)]),
        );
    }
    for (var i = 0u; i < rows_in_tile(row0, P.rows); i++) {
        let v = tile_row(t, i) + bias4;
        let to = out_row(g, row0 + i);
        let at = P.y_base + (g * P.rows + to.row) * P.outputs;
        for (var c = 0u; c < 4u; c++) {
            if (col + c < P.outputs) {
                y[at + col + c] = Elem(select(0.0, act(v[c]), to.live));
            }
        }
    }
}

fn store_tile_dx(g: u32, row0: u32, base: u32, col: u32, t: Tile) {
    for (var i = 0u; i < rows_in_tile(row0, P.rows); i++) {
        let v = tile_row(t, i);
        let to = out_row(g, row0 + i);
        for (var c = 0u; c < 4u; c++) {
            store_dx(g, row0 + i, to, base, col + c, v[c]);
        }
    }
}

fn store_tile_dw(g: u32, row0: u32, col: u32, t: Tile) {
    for (var i = 0u; i < rows_in_tile(row0, P.inputs + 1u); i++) {
        let v = tile_row(t, i);
        for (var c = 0u; c < 4u; c++) {
            store_dw(g, row0 + i, col + c, v[c]);
        }
    }
}

// ---------------------------------------------------------------- naive kernels
// One invocation per output: the baseline the tiled kernels are measured against,
// and the right choice for tiny shapes.

@compute @workgroup_size(WG, WG_ROWS)
fn forward_naive(@builtin(global_invocation_id) id: vec3<u32>) {
    let col = id.x;
    let s = id.y;
    let g = id.z;
    if (col >= P.outputs || s >= P.rows) {
        return;
    }
    let to = out_row(g, s);
    let xo = x_offset(g);
    let k_end = select(0u, xo.width, to.live);
    var acc = 0.0;
    for (var k = 0u; k < k_end; k++) {
        acc = fma(x_at(xo, to.row, k), w_at(g, k, col), acc);
    }
    store_forward(g, s, to, col, acc);
}

@compute @workgroup_size(WG, WG_ROWS)
fn backward_input_naive(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let s = id.y;
    if (i >= P.x_columns || s >= P.rows) {
        return;
    }
    // Dense shared X: one dX summed over all groups. Otherwise one group per z.
    let groups = dx_groups(id.z);
    let to = out_row(id.z, s);
    let j_end = select(0u, P.outputs, to.live);
    var acc = 0.0;
    for (var g = groups.x; g < groups.y; g++) {
        let win = window_of(g);
        for (var j = 0u; j < j_end; j++) {
            acc = fma(dz_at(g, to.row, j), wt_at(g, win, j, i), acc);
        }
    }
    store_dx(id.z, s, to, slot_base(id.z), i, acc);
}

@compute @workgroup_size(WG, WG_ROWS)
fn backward_weights_naive(@builtin(global_invocation_id) id: vec3<u32>) {
    let col = id.x;
    let i = id.y;
    let g = id.z;
    if (col >= P.outputs || i > P.inputs) {
        return;
    }
    let n = live_slots(g);
    let xo = x_offset(g);
    var acc = 0.0;
    for (var b = 0u; b < n; b++) {
        let row = row_of(g, b);
        acc = fma(x_or_one(xo, row, i), dz_at(g, row, col), acc);
    }
    store_dw(g, i, col, acc);
}
