// Fused gate + mix: per gate t, G_t = softmax(X · Wg_t + bg_t) over the experts and
// M_t = Σ_e G_t[:, e] ⊙ H_e, in one dispatch; and the part of the backward pass that
// is not a GEMM (dH and dz; the host runs dWg, dbg and dX as grouped GEMMs on dz).
//
// Layouts, row-major, stored as `Elem` (f32 or f16, set by the storage_*.wgsl file
// compiled with this one; all arithmetic is f32) (T gates, E experts):
//   X [rows, inputs], or one block per gate (gate t's x_gate_stride · t on)
//   Wg [T, inputs, E]    bg [T, E]    H, dH [E, rows, width]
//   G, dz [T, rows, E]  M, dM [T, rows, width]   logit_offset, p [T, rows, E]
//
// Every output is one sequential chain over its reduction index, the same whatever
// WG, RB and CN are, so every tiling gives bitwise identical results. No atomics.
// Bounds are handled here, for any T, E, rows, inputs and width.

struct GateMixParams {
    gates: u32,
    experts: u32,
    rows: u32,
    inputs: u32,
    width: u32,
    // Element offsets of each operand inside its binding (bindings start at the
    // device's offset alignment, operands anywhere after it).
    x_base: u32,
    wg_base: u32,
    bg_base: u32,
    h_base: u32,
    g_base: u32,
    m_base: u32,
    dm_base: u32,
    dh_base: u32,
    dz_base: u32,
    // Experts each gate keeps per row: the dense softmax when k = experts, otherwise
    // the top k (the gate_topk kernel).
    k: u32,
    // Task-specific experts: every gate sees experts below shared_experts, and gate t
    // also its own own_experts after them (own_experts = 0: every gate sees all).
    shared_experts: u32,
    own_experts: u32,
    // Forward phases to run: STAGE_GATE (logits and softmax into G), STAGE_MIX (M
    // from G). Sparse experts run between the two, on the rows G routes to them.
    stages: u32,
    // With use_offset ≠ 0, logit_offset (a noisy gate's ε · softplus(n)) is added to
    // every logit before the selection and softmax; with 0 it is not read at all.
    offset_base: u32,
    use_offset: u32,
    // With use_p ≠ 0 the softmax phase also writes p, the full softmax of each row's
    // logits over the experts the gate sees (0 for the others), before the top-k cut
    // (a load-balancing loss averages it); with 0, p is not touched at all.
    p_base: u32,
    use_p: u32,
    // With shared_selection ≠ 0 every gate keeps the same k experts per row, those
    // with the largest sum of the gates' logits (the host allows it only where every
    // gate sees every expert, and for at most 32 · SHARED_MASK_WORDS experts).
    shared_selection: u32,
    // Elements between the gates' blocks of X; 0: every gate reads the one X.
    x_gate_stride: u32,
    // The shared gate of a multi-level model's level (it sees every expert, whatever
    // shared_experts and own_experts say, and keeps k_all of them), or 0xffffffff.
    all_gate: u32,
    k_all: u32,
    // 1: the backward stores dH ⊙ [H > 0], the gradient at the input of the ReLU that
    // made H, so the expert GEMM's backward loads no H (and the same bits).
    relu_dh: u32,
}

const STAGE_GATE: u32 = 1u;
const STAGE_MIX: u32 = 2u;

@group(0) @binding(0) var<uniform> P: GateMixParams;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read> wg: array<Elem>;
@group(0) @binding(3) var<storage, read> bg: array<Elem>;
@group(0) @binding(4) var<storage, read> h: array<Elem>;
// Forward output; also the scratch holding the logits until the softmax.
@group(0) @binding(5) var<storage, read_write> g: array<Elem>;
@group(0) @binding(6) var<storage, read_write> m: array<Elem>;
// The forward's G, read by the backward pass.
@group(0) @binding(7) var<storage, read> g_saved: array<Elem>;
@group(0) @binding(8) var<storage, read> dm: array<Elem>;
@group(0) @binding(9) var<storage, read_write> dh: array<Elem>;
@group(0) @binding(10) var<storage, read_write> dz: array<Elem>;
@group(0) @binding(11) var<storage, read> logit_offset: array<Elem>;
@group(0) @binding(12) var<storage, read_write> p_out: array<Elem>;

// Invocations per workgroup.
override WG: u32 = 8u;
// Blocks of 8 rows per workgroup.
override RB: u32 = 4u;
// Groups of 4 (gate, expert) columns per invocation in the logits tile (1 or 2).
override CN: u32 = 2u;

// ---------------------------------------------------------------- register tiles
//
// A loaded float costs as much as dozens of fmas on CPU drivers, so every kernel here
// is a set of small matrix products computed as outer products: each reduction step
// loads 4 values of each operand and does 16 fmas into a Quad of accumulators. Quads
// are named struct members, not arrays, so drivers keep them in registers.

struct Quad {
    q0: vec4<f32>,
    q1: vec4<f32>,
    q2: vec4<f32>,
    q3: vec4<f32>,
}

// One step of 16 chains: q_i[c] += a[i] * b[c].
fn quad_step(q: ptr<function, Quad>, a: vec4<f32>, b: vec4<f32>) {
    (*q).q0 = fma(vec4(a.x), b, (*q).q0);
    (*q).q1 = fma(vec4(a.y), b, (*q).q1);
    (*q).q2 = fma(vec4(a.z), b, (*q).q2);
    (*q).q3 = fma(vec4(a.w), b, (*q).q3);
}

fn quad_row(q: Quad, i: u32) -> vec4<f32> {
    switch i {
        case 0u: { return q.q0; }
        case 1u: { return q.q1; }
        case 2u: { return q.q2; }
        default: { return q.q3; }
    }
}

// ---------------------------------------------------------------- element access
// A quad fetch loads 4 values along one dimension, its indices clamped so that they
// stay in bounds; a clamped lane only feeds accumulators that are never stored.
// Reductions run exactly to their end, so no lane needs zeroing.

// Element index of (t, row, e) in G and dz, of (t, row, j) in M and dM, of (e, row, j)
// in H and dH, before the operand's base.
fn gate_index(t: u32, row: u32, e: u32) -> u32 {
    return (t * P.rows + row) * P.experts + e;
}

fn mix_index(t: u32, row: u32, j: u32) -> u32 {
    return (t * P.rows + row) * P.width + j;
}

fn expert_index(e: u32, row: u32, j: u32) -> u32 {
    return (e * P.rows + row) * P.width + j;
}

// i0, i0 + 1, i0 + 2, i0 + 3, none past `end - 1`.
fn quad(i0: u32, end: u32) -> vec4<u32> {
    return min(vec4(i0) + vec4(0u, 1u, 2u, 3u), vec4(end - 1u));
}

fn load_x(at: vec4<u32>) -> vec4<f32> {
    return vec4(f32(x[at.x]), f32(x[at.y]), f32(x[at.z]), f32(x[at.w]));
}

fn load_wg(at: vec4<u32>) -> vec4<f32> {
    return vec4(f32(wg[at.x]), f32(wg[at.y]), f32(wg[at.z]), f32(wg[at.w]));
}

fn load_h(at: vec4<u32>) -> vec4<f32> {
    return vec4(f32(h[at.x]), f32(h[at.y]), f32(h[at.z]), f32(h[at.w]));
}

fn load_g(at: vec4<u32>) -> vec4<f32> {
    return vec4(f32(g[at.x]), f32(g[at.y]), f32(g[at.z]), f32(g[at.w]));
}

fn load_g_saved(at: vec4<u32>) -> vec4<f32> {
    return vec4(
        f32(g_saved[at.x]), f32(g_saved[at.y]), f32(g_saved[at.z]), f32(g_saved[at.w]),
    );
}

fn load_dm(at: vec4<u32>) -> vec4<f32> {
    return vec4(f32(dm[at.x]), f32(dm[at.y]), f32(dm[at.z]), f32(dm[at.w]));
}

// X[row0..row0+4, k] of the block starting at xo.
fn x_rows(xo: u32, row0: u32, k: u32) -> vec4<f32> {
    return load_x(xo + k + quad(row0, P.rows) * P.inputs);
}

// The logits form T·E columns c = t·E + e. Where columns c0..c0+4 of Wg start (at
// row k = 0); row k is k·E further on.
fn wg_columns(c0: u32) -> vec4<u32> {
    let c = quad(c0, P.gates * P.experts);
    return P.wg_base + c / P.experts * (P.inputs * P.experts) + c % P.experts;
}

fn wg_row(columns: vec4<u32>, k: u32) -> vec4<f32> {
    return load_wg(columns + k * P.experts);
}

// G_t[row, e] for gates t0..t0+3, from the forward's output.
fn g_gates(t0: u32, row: u32, e: u32) -> vec4<f32> {
    return load_g(P.g_base + e + (quad(t0, P.gates) * P.rows + row) * P.experts);
}

// G_t[row, e] for experts e0..e0+3, from the saved G.
fn g_experts(t: u32, row: u32, e0: u32) -> vec4<f32> {
    return load_g_saved(P.g_base + gate_index(t, row, 0u) + quad(e0, P.experts));
}

// H_e[row, j..j+4].
fn h_columns(e: u32, row: u32, j: u32) -> vec4<f32> {
    return load_h(P.h_base + expert_index(e, row, 0u) + quad(j, P.width));
}

// H_e[row, j] for experts e0..e0+3.
fn h_experts(e0: u32, row: u32, j: u32) -> vec4<f32> {
    return load_h(P.h_base + j + (quad(e0, P.experts) * P.rows + row) * P.width);
}

// dM_t[row, j..j+4].
fn dm_columns(t: u32, row: u32, j: u32) -> vec4<f32> {
    return load_dm(P.dm_base + mix_index(t, row, 0u) + quad(j, P.width));
}

// dM_t[row, j] for gates t0..t0+3.
fn dm_gates(t0: u32, row: u32, j: u32) -> vec4<f32> {
    return load_dm(P.dm_base + j + (quad(t0, P.gates) * P.rows + row) * P.width);
}

// ---------------------------------------------------------------- forward

// Where columns c0..c0+4 of the logits (see wg_columns) go in G at row 0, their
// biases, and how many of them exist. Worked out once per tile, not per store: CPU
// drivers divide integers lane by lane, and with a division by E in each of the
// unrolled stores lavapipe took twice as long to compile the forward kernel.
struct LogitColumns {
    at: vec4<u32>,
    bias: vec4<f32>,
    count: u32,
}

fn logit_columns(c0: u32, end: u32) -> LogitColumns {
    let n = P.gates * P.experts;
    let c = quad(c0, n);
    let t = c / vec4(P.experts);
    let at = P.g_base + t * (P.rows * P.experts) + (c - t * P.experts);
    let b = P.bg_base + c;
    let bias = vec4(f32(bg[b.x]), f32(bg[b.y]), f32(bg[b.z]), f32(bg[b.w]));
    return LogitColumns(at, bias, min(4u, end - min(c0, end)));
}

// Logits of rows row0..row0+4 into G, with their biases.
fn store_logits(row0: u32, cols: LogitColumns, q: Quad) {
    let rows = select(0u, min(4u, P.rows - row0), row0 < P.rows);
    for (var i = 0u; i < rows; i++) {
        let v = quad_row(q, i) + cols.bias;
        let at = cols.at + (row0 + i) * P.experts;
        for (var c = 0u; c < 4u; c++) {
            if (c < cols.count) {
                g[at[c]] = Elem(v[c]);
            }
        }
    }
}

// Logits of 8 rows × 4·CN columns below column `end`, on the X block at xo: each X
// value feeds 4·CN columns, each Wg value 8 rows.
fn logits_tile(row0: u32, c0: u32, end: u32, xo: u32) {
    let wa = wg_columns(c0);
    let wb = wg_columns(c0 + 4u);
    var a0: Quad;
    var a1: Quad;
    var b0: Quad;
    var b1: Quad;
    for (var k = 0u; k < P.inputs; k++) {
        let xa = x_rows(xo, row0, k);
        let xb = x_rows(xo, row0 + 4u, k);
        let w = wg_row(wa, k);
        quad_step(&a0, xa, w);
        quad_step(&a1, xb, w);
        if (CN > 1u) {
            let v = wg_row(wb, k);
            quad_step(&b0, xa, v);
            quad_step(&b1, xb, v);
        }
    }
    let ca = logit_columns(c0, end);
    store_logits(row0, ca, a0);
    store_logits(row0 + 4u, ca, a1);
    if (CN > 1u) {
        let cb = logit_columns(c0 + 4u, end);
        store_logits(row0, cb, b0);
        store_logits(row0 + 4u, cb, b1);
    }
}

fn sees(t: u32, e: u32) -> bool {
    return P.own_experts == 0u || t == P.all_gate || e < P.shared_experts
        || (e - P.shared_experts) / P.own_experts == t;
}

// Adds a noisy gate's logit offset to one row of logits: here, once per row, rather
// than in the unrolled logits tile stores, where it cost lavapipe a third more time to
// compile the forward kernel.
fn add_offset_row(t: u32, row: u32) {
    let base = P.g_base + gate_index(t, row, 0u);
    let offset = P.offset_base + gate_index(t, row, 0u);
    for (var e = 0u; e < P.experts; e++) {
        g[base + e] = Elem(f32(g[base + e]) + f32(logit_offset[offset + e]));
    }
}

// The last step of a softmax: the row of G at `base` divided by its sum.
fn normalize_g_row(base: u32, sum: f32) {
    for (var e = 0u; e < P.experts; e++) {
        g[base + e] = Elem(f32(g[base + e]) / sum);
    }
}

// The top-k softmaxes' last step: the row of G at `base` divided by its sum, and with
// use_p the row of p at `p_at` by its own.
fn normalize_rows(base: u32, sum: f32, p_at: u32, full: f32) {
    normalize_g_row(base, sum);
    if (P.use_p != 0u) {
        for (var e = 0u; e < P.experts; e++) {
            p_out[p_at + e] = Elem(f32(p_out[p_at + e]) / full);
        }
    }
}

// Top-k softmax of one row of logits in place, over the experts gate t sees. The logits are ranked larger first,
// then lower expert first, a strict total order (for finite logits), so exactly k are
// selected whatever the ties. Picking them one at a time, each the first logit ranked
// after the previous pick, costs k·E comparisons and no scratch: the first pick is the
// row maximum the softmax subtracts (so large logits cannot overflow exp), the k-th
// pick the cut below which nothing is selected.
fn topk_softmax_row(t: u32, row: u32) {
    let base = P.g_base + gate_index(t, row, 0u);
    let k = select(P.k, P.k_all, t == P.all_gate);
    var top = 0.0;
    var cut = 0.0;
    var cut_e = 0u;
    for (var j = 0u; j < k; j++) {
        var found = false;
        var best = 0.0;
        var best_e = 0u;
        for (var e = 0u; e < P.experts; e++) {
            let z = f32(g[base + e]);
            let after = j == 0u || z < cut || (z == cut && e > cut_e);
            if (sees(t, e) && after && (!found || z > best)) {
                found = true;
                best = z;
                best_e = e;
            }
        }
        if (j == 0u) {
            top = best;
        }
        cut = best;
        cut_e = best_e;
    }
    // Unselected experts add an exact 0 to the sum, which keeps k = E identical to the
    // dense softmax.
    let p_at = P.p_base + gate_index(t, row, 0u);
    var sum = 0.0;
    var full = 0.0;
    for (var e = 0u; e < P.experts; e++) {
        let z = f32(g[base + e]);
        var p = 0.0;
        if (sees(t, e) && (z > cut || (z == cut && e <= cut_e))) {
            p = exp(z - top);
        }
        if (P.use_p != 0u) {
            // The same exponentials over every expert seen: top is their maximum too.
            var q = 0.0;
            if (sees(t, e)) {
                q = exp(z - top);
            }
            p_out[p_at + e] = Elem(q);
            full += q;
        }
        g[base + e] = Elem(p);
        sum += p;
    }
    normalize_rows(base, sum, p_at, full);
}

// Shared selection keeps the row's selected experts as a bit mask, 32 to a word.
const SHARED_MASK_WORDS: u32 = 8u;

// The sum over the gates, in gate order, of their logits for expert e on `row`.
fn summed_logit(row: u32, e: u32) -> f32 {
    var s = 0.0;
    for (var t = 0u; t < P.gates; t++) {
        s += f32(g[P.g_base + gate_index(t, row, e)]);
    }
    return s;
}

fn is_selected(mask: array<u32, SHARED_MASK_WORDS>, e: u32) -> bool {
    return (mask[e / 32u] & (1u << (e % 32u))) != 0u;
}

// Shared top-k of one row, every gate's logits in place: the k experts with the
// largest summed logits (equal sums: the lower expert first; picked one at a time as
// in topk_softmax_row), then each gate's softmax over those k. The selection must be
// complete before any gate's row is overwritten, since every gate's logits enter every
// sum; the mask carries it (the cut of topk_softmax_row would need the sums again).
fn shared_topk_row(row: u32) {
    if (P.use_offset != 0u) {
        for (var t = 0u; t < P.gates; t++) {
            add_offset_row(t, row);
        }
    }
    var mask: array<u32, SHARED_MASK_WORDS>;
    var cut = 0.0;
    var cut_e = 0u;
    for (var j = 0u; j < P.k; j++) {
        var found = false;
        var best = 0.0;
        var best_e = 0u;
        for (var e = 0u; e < P.experts; e++) {
            let z = summed_logit(row, e);
            let after = j == 0u || z < cut || (z == cut && e > cut_e);
            if (after && (!found || z > best)) {
                found = true;
                best = z;
                best_e = e;
            }
        }
        mask[best_e / 32u] |= 1u << (best_e % 32u);
        cut = best;
        cut_e = best_e;
    }
    for (var t = 0u; t < P.gates; t++) {
        let base = P.g_base + gate_index(t, row, 0u);
        // This gate's largest selected logit, subtracted so exp cannot overflow; and
        // its largest logit of all, for the full softmax.
        var top = 0.0;
        var found = false;
        var top_all = f32(g[base]);
        for (var e = 0u; e < P.experts; e++) {
            let z = f32(g[base + e]);
            top_all = max(top_all, z);
            if (is_selected(mask, e) && (!found || z > top)) {
                found = true;
                top = z;
            }
        }
        let p_at = P.p_base + gate_index(t, row, 0u);
        var sum = 0.0;
        var full = 0.0;
        for (var e = 0u; e < P.experts; e++) {
            let z = f32(g[base + e]);
            if (P.use_p != 0u) {
                let q = exp(z - top_all);
                p_out[p_at + e] = Elem(q);
                full += q;
            }
            let p = select(0.0, exp(z - top), is_selected(mask, e));
            g[base + e] = Elem(p);
            sum += p;
        }
        normalize_rows(base, sum, p_at, full);
    }
}

// Softmax of one row of logits in place, the row maximum subtracted so that large
// logits cannot overflow exp; with k < experts or task-specific experts, over the
// top k of those the gate sees.
fn softmax_row(t: u32, row: u32) {
    if (P.use_offset != 0u) {
        add_offset_row(t, row);
    }
    if (P.k < P.experts || P.own_experts != 0u) {
        topk_softmax_row(t, row);
        return;
    }
    let base = P.g_base + gate_index(t, row, 0u);
    var top = f32(g[base]);
    for (var e = 1u; e < P.experts; e++) {
        top = max(top, f32(g[base + e]));
    }
    var sum = 0.0;
    for (var e = 0u; e < P.experts; e++) {
        let p = exp(f32(g[base + e]) - top);
        g[base + e] = Elem(p);
        sum += p;
    }
    normalize_g_row(base, sum);
    // The dense softmax is the full one.
    if (P.use_p != 0u) {
        let p_at = P.p_base + gate_index(t, row, 0u);
        for (var e = 0u; e < P.experts; e++) {
            p_out[p_at + e] = g[base + e];
        }
    }
}

// M_t[row, j..j+4] = Σ_e G_t[row, e] · H_e[row, j..j+4] for gates t0..t0+3: each H
// value feeds 4 gates.
fn mix_tile(row: u32, t0: u32, j: u32) {
    var q: Quad;
    for (var e = 0u; e < P.experts; e++) {
        quad_step(&q, g_gates(t0, row, e), h_columns(e, row, j));
    }
    for (var i = 0u; i < 4u; i++) {
        let v = quad_row(q, i);
        for (var c = 0u; c < 4u; c++) {
            if (t0 + i < P.gates && j + c < P.width) {
                m[P.m_base + mix_index(t0 + i, row, j + c)] = Elem(v[c]);
            }
        }
    }
}

// One workgroup per block of 8·RB rows, all gates. Its invocations share three
// phases: logits tiles, row softmaxes, mixture tiles. E is only known at run time, so
// the logits wait in G (not in workgroup memory) for the next phase; storageBarrier
// makes the workgroup's writes to G visible to all its invocations. Loop bounds
// depend only on uniform values, so every invocation reaches every barrier.
@compute @workgroup_size(WG)
fn forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let block0 = group.x * RB * 8u;
    let block_rows = min(RB * 8u, P.rows - block0);

    if ((P.stages & STAGE_GATE) != 0u) {
        // With one X block per gate, a tile's columns are one gate's (its X rows are
        // that gate's); with one X, they run over all gates' logits.
        let per_gate = P.x_gate_stride != 0u;
        let span = select(P.gates * P.experts, P.experts, per_gate);
        let per_span = (span + 4u * CN - 1u) / (4u * CN);
        let col_tiles = select(1u, P.gates, per_gate) * per_span;
        let tiles = ((block_rows + 7u) / 8u) * col_tiles;
        for (var first = 0u; first < tiles; first += WG) {
            let item = first + lid;
            if (item < tiles) {
                let ct = item % col_tiles;
                let t = ct / per_span;
                let c0 = t * span + ct % per_span * 4u * CN;
                let xo = P.x_base + t * P.x_gate_stride;
                logits_tile(block0 + item / col_tiles * 8u, c0, (t + 1u) * span, xo);
            }
        }
        storageBarrier();

        if (P.shared_selection != 0u) {
            // One item per row: its selection involves every gate.
            for (var first = 0u; first < block_rows; first += WG) {
                let item = first + lid;
                if (item < block_rows) {
                    shared_topk_row(block0 + item);
                }
            }
        } else {
            let rows = P.gates * block_rows;
            for (var first = 0u; first < rows; first += WG) {
                let item = first + lid;
                if (item < rows) {
                    softmax_row(item / block_rows, block0 + item % block_rows);
                }
            }
        }
        storageBarrier();
    }
    if ((P.stages & STAGE_MIX) == 0u) {
        return;
    }

    let quads = (P.width + 3u) / 4u;
    let per_row = (P.gates + 3u) / 4u * quads;
    let mixes = block_rows * per_row;
    for (var first = 0u; first < mixes; first += WG) {
        let item = first + lid;
        if (item < mixes) {
            let rest = item % per_row;
            mix_tile(block0 + item / per_row, rest / quads * 4u, rest % quads * 4u);
        }
    }
}

// ---------------------------------------------------------------- backward

// dz for gates t0..t0+3 of one row: dg_t[e] = ⟨dM_t[row], H_e[row]⟩ (4 gates × 4
// experts at a time), then dz_t[e] = G_t[e] · (dg_t[e] − Σ_e' G_t[e'] · dg_t[e']);
// dz holds dg until the sum is known.
fn dz_tile(row: u32, t0: u32) {
    var s = vec4(0.0);
    for (var e0 = 0u; e0 < P.experts; e0 += 4u) {
        var q: Quad;
        for (var j = 0u; j < P.width; j++) {
            quad_step(&q, dm_gates(t0, row, j), h_experts(e0, row, j));
        }
        for (var i = 0u; i < 4u; i++) {
            let v = quad_row(q, i);
            for (var c = 0u; c < 4u; c++) {
                if (t0 + i < P.gates && e0 + c < P.experts) {
                    let at = gate_index(t0 + i, row, e0 + c);
                    // ⟨g, dg⟩ from dg as stored (f32(Elem(..)) rounds it to f16, if
                    // that is the storage), so that a row's dz still sum to zero.
                    dz[P.dz_base + at] = Elem(v[c]);
                    s[i] = fma(f32(g_saved[P.g_base + at]), f32(Elem(v[c])), s[i]);
                }
            }
        }
    }
    for (var i = 0u; i < 4u && t0 + i < P.gates; i++) {
        for (var e = 0u; e < P.experts; e++) {
            let at = gate_index(t0 + i, row, e);
            dz[P.dz_base + at] =
                Elem(f32(g_saved[P.g_base + at]) * (f32(dz[P.dz_base + at]) - s[i]));
        }
    }
}

// dH_e[row, j..j+4] = Σ_t G_t[row, e] · dM_t[row, j..j+4] for experts e0..e0+3.
fn dh_tile(row: u32, e0: u32, j: u32) {
    var q: Quad;
    for (var t = 0u; t < P.gates; t++) {
        quad_step(&q, g_experts(t, row, e0), dm_columns(t, row, j));
    }
    for (var i = 0u; i < 4u; i++) {
        let v = quad_row(q, i);
        for (var c = 0u; c < 4u; c++) {
            if (e0 + i < P.experts && j + c < P.width) {
                let at = expert_index(e0 + i, row, j + c);
                var d = v[c];
                if (P.relu_dh != 0u) {
                    d = select(0.0, d, f32(h[P.h_base + at]) > 0.0);
                }
                dh[P.dh_base + at] = Elem(d);
            }
        }
    }
}

// One workgroup per block of 8·RB rows, all gates (dH sums over them). Each dz tile
// and each dH tile is owned by one invocation, so no barrier is needed.
@compute @workgroup_size(WG)
fn backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let block0 = group.x * RB * 8u;
    let block_rows = min(RB * 8u, P.rows - block0);

    let gate_quads = (P.gates + 3u) / 4u;
    let dz_tiles = block_rows * gate_quads;
    for (var first = 0u; first < dz_tiles; first += WG) {
        let item = first + lid;
        if (item < dz_tiles) {
            dz_tile(block0 + item / gate_quads, item % gate_quads * 4u);
        }
    }

    let quads = (P.width + 3u) / 4u;
    let per_row = (P.experts + 3u) / 4u * quads;
    let dh_tiles = block_rows * per_row;
    for (var first = 0u; first < dh_tiles; first += WG) {
        let item = first + lid;
        if (item < dh_tiles) {
            let rest = item % per_row;
            dh_tile(block0 + item / per_row, rest / quads * 4u, rest % quads * 4u);
        }
    }
}
