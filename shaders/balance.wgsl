// Load-balancing auxiliary loss of the gates, forward and backward.
//
// Two losses (P.kind): the importance loss w · CV²(I) (KIND_IMPORTANCE), and the
// Switch / GShard load loss (KIND_LOAD) w · E · Σ_e f[t, e] · P[t, e], where
// f = L / (k · B) is the fraction of routed slots (a constant) and P = (1/B) Σ_b p the
// mean of the FULL softmax p of the gate's logits over the E experts it sees.
//
// Layouts, row-major (T gates, B rows, E experts):
//   G, dz   [T, B, E]  stored as `Elem` (f32 or f16, set by storage_*.wgsl)
//   p       [T, B, E]  (load loss only) the full softmax, as `Elem`
//   stats   always f32, four sections one after the other:
//             importance I [T, E]   I[t, e] = Σ_b G[t, b, e]   (load loss: Σ_b p[t, b, e])
//             load L       [T, E]   L[t, e] = #{b : G[t, b, e] != 0}
//             coefficient  [T, E]   a[t, e] = w · ∂CV²(I[t, :]) / ∂I[t, e]
//                                   (load loss: a[t, e] = w · E · f[t, e] / B)
//             aux          [T]      aux[t]  = w · CV²(I[t, :])
//                                   (load loss: w · E · Σ_e f[t, e] · P[t, e] = Σ_e a · I)
//
// With μ = mean_e I and var = mean_e (I − μ)², CV² = var / μ² and
//   ∂CV² / ∂I_e = 2 / (E·μ) · ((I_e − μ) / μ − CV²).
// A zero μ (no importance anywhere) or w = 0 (the loss is off) gives aux = 0 and a = 0.
//
// The load loss's gradient, f held constant, is
//   ∂aux / ∂z[t, b, e'] = p[b, e'] · (a[t, e'] − Σ_e a[t, e] · p[b, e]),
// the importance loss's backward with p in place of G: the host binds p as `g` there.
//
// Forward: one workgroup per gate; each expert's rows are summed in strided sequential
// runs, then by a fixed-shape tree in workgroup memory. Backward: one invocation per
// (gate, row), experts in order. No atomics: for a given WG (and shape) every result
// is bitwise reproducible, and the backward's does not depend on WG at all.

struct BalanceParams {
    gates: u32,
    rows: u32,
    experts: u32,
    // w ≥ 0, finite (the host checks).
    weight: f32,
    // Element offsets of each operand inside its binding (bindings start at the
    // device's offset alignment, operands anywhere after it).
    g_base: u32,
    stats_base: u32,
    dz_base: u32,
    // KIND_IMPORTANCE or KIND_LOAD (forward only).
    kind: u32,
    // Load loss: where p starts in its binding, the experts each gate keeps per row
    // (k) and the experts each gate sees (E of the loss).
    p_base: u32,
    k: u32,
    seen: u32,
    _pad: u32,
}

const KIND_IMPORTANCE: u32 = 0u;
const KIND_LOAD: u32 = 1u;

@group(0) @binding(0) var<uniform> P: BalanceParams;
@group(0) @binding(1) var<storage, read> g: array<Elem>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
// The forward's stats, read by the backward pass.
@group(0) @binding(3) var<storage, read> stats_saved: array<f32>;
@group(0) @binding(4) var<storage, read_write> dz: array<Elem>;
// The load loss's full softmax p, summed by the forward pass (the importance loss
// binds a stand-in here and never reads it).
@group(0) @binding(5) var<storage, read> probs: array<Elem>;

// Invocations per workgroup; a power of two (the host checks).
override WG: u32 = 64u;

var<workgroup> importance_part: array<f32, WG>;
var<workgroup> load_part: array<u32, WG>;

fn importance_at(t: u32, e: u32) -> u32 {
    return P.stats_base + t * P.experts + e;
}

fn load_at(t: u32, e: u32) -> u32 {
    return P.stats_base + (P.gates + t) * P.experts + e;
}

fn coefficient_at(t: u32, e: u32) -> u32 {
    return P.stats_base + (2u * P.gates + t) * P.experts + e;
}

fn aux_at(t: u32) -> u32 {
    return P.stats_base + 3u * P.gates * P.experts + t;
}

// The load loss of gate t and its coefficients, from the sums of p and the loads
// already stored.
fn finish_load(t: u32) {
    if (P.weight == 0.0) {
        for (var e = 0u; e < P.experts; e++) {
            stats[coefficient_at(t, e)] = 0.0;
        }
        stats[aux_at(t)] = 0.0;
        return;
    }
    let rows = f32(P.rows);
    // w · E / (k · B): a[t, e] = scale · L[t, e] / B.
    let scale = P.weight * f32(P.seen) / (f32(P.k) * rows);
    var aux = 0.0;
    for (var e = 0u; e < P.experts; e++) {
        let a = scale * stats[load_at(t, e)] / rows;
        stats[coefficient_at(t, e)] = a;
        aux = fma(a, stats[importance_at(t, e)], aux);
    }
    stats[aux_at(t)] = aux;
}

// The loss of gate t and its coefficients, from the importances already stored.
fn finish_gate(t: u32) {
    if (P.kind == KIND_LOAD) {
        finish_load(t);
        return;
    }
    let n = f32(P.experts);
    var total = 0.0;
    for (var e = 0u; e < P.experts; e++) {
        total += stats[importance_at(t, e)];
    }
    let mean = total / n;
    // Centred, not E[I²] − μ²: balanced experts would cancel that to noise.
    var squares = 0.0;
    for (var e = 0u; e < P.experts; e++) {
        let d = stats[importance_at(t, e)] - mean;
        squares = fma(d, d, squares);
    }
    let mean2 = mean * mean;
    // mean2 == 0 also catches a mean so small that its square underflows, where the
    // ratio below would be inf or NaN; a NaN mean still reaches the outputs.
    if (P.weight == 0.0 || mean2 == 0.0) {
        for (var e = 0u; e < P.experts; e++) {
            stats[coefficient_at(t, e)] = 0.0;
        }
        stats[aux_at(t)] = 0.0;
        return;
    }
    let cv2 = (squares / n) / mean2;
    stats[aux_at(t)] = P.weight * cv2;
    let scale = 2.0 * P.weight / (n * mean);
    for (var e = 0u; e < P.experts; e++) {
        let relative = (stats[importance_at(t, e)] - mean) / mean;
        stats[coefficient_at(t, e)] = scale * (relative - cv2);
    }
}

// Adds G[t, b, e] (load loss: p[t, b, e]) of row b, if it is a row, to the running
// sum, and counts a nonzero G[t, b, e]. `first` is gate t's first element.
fn accumulate(
    first: u32,
    b: u32,
    e: u32,
    sum: ptr<function, f32>,
    count: ptr<function, u32>,
) {
    if (b < P.rows) {
        let at = first + b * P.experts + e;
        let v = f32(g[P.g_base + at]);
        var s = v;
        if (P.kind == KIND_LOAD) {
            s = f32(probs[P.p_base + at]);
        }
        *sum += s;
        *count += select(0u, 1u, v != 0.0);
    }
}

// The invocations form R row lanes × C expert lanes (C = min(E, WG)), so that lanes
// next to each other read experts next to each other. Lane (r, c) sums expert e's
// rows r, r + R, r + 2R, ... in order, four per loop iteration: llvmpipe (lavapipe)
// ends an invocation's loops after 65,535 iterations in all, and the host checks the
// shape stays within that (see `forward_iterations` in balance.rs). A tree over the
// row lanes then adds the R partial sums of each expert.
@compute @workgroup_size(WG)
fn balance_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.x;
    let first = t * P.rows * P.experts;
    let lanes = min(P.experts, WG);
    let row_lanes = WG / lanes;
    let c = lid % lanes;
    let r = lid / lanes;
    var span = 1u;
    while (span < row_lanes) {
        span *= 2u;
    }
    for (var e0 = 0u; e0 < P.experts; e0 += lanes) {
        let e = e0 + c;
        var sum = 0.0;
        var count = 0u;
        if (r < row_lanes && e < P.experts) {
            for (var b = r; b < P.rows; b += 4u * row_lanes) {
                accumulate(first, b, e, &sum, &count);
                accumulate(first, b + row_lanes, e, &sum, &count);
                accumulate(first, b + 2u * row_lanes, e, &sum, &count);
                accumulate(first, b + 3u * row_lanes, e, &sum, &count);
            }
        }
        importance_part[lid] = sum;
        load_part[lid] = count;
        workgroupBarrier();
        for (var stride = span / 2u; stride > 0u; stride /= 2u) {
            if (r < stride && r + stride < row_lanes) {
                let other = lid + stride * lanes;
                importance_part[lid] = importance_part[lid] + importance_part[other];
                load_part[lid] = load_part[lid] + load_part[other];
            }
            workgroupBarrier();
        }
        // Each lane of row 0 reads only its own slot, and every lane writes only its
        // own in the next round, so that round may start without another barrier.
        if (r == 0u && e < P.experts) {
            stats[importance_at(t, e)] = importance_part[lid];
            stats[load_at(t, e)] = f32(load_part[lid]);
        }
    }
    // The lanes of row 0 stored the importances; invocation 0 reads them all.
    storageBarrier();
    if (lid == 0u) {
        finish_gate(t);
    }
}

// dz[t, b, e] += G[t, b, e] · (a[t, e] − Σ_e' G[t, b, e'] · a[t, e']): the aux loss adds
// a[t, e] to every row's dg, pushed through the (top-k) softmax's Jacobian.
@compute @workgroup_size(WG)
fn balance_backward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let rows = P.gates * P.rows;
    // The host caps the workgroup count at the device limit; invocations then stride
    // over the rows.
    for (var r = gid.x; r < rows; r += groups.x * WG) {
        let t = r / P.rows;
        let at = r * P.experts;
        var s = 0.0;
        for (var e = 0u; e < P.experts; e++) {
            s = fma(f32(g[P.g_base + at + e]), stats_saved[coefficient_at(t, e)], s);
        }
        for (var e = 0u; e < P.experts; e++) {
            let step = f32(g[P.g_base + at + e]) * (stats_saved[coefficient_at(t, e)] - s);
            // An exact zero step (an unselected expert, or w = 0) leaves dz's bits
            // alone: −0 + 0 would turn it into +0.
            if (step != 0.0) {
                let i = P.dz_base + at + e;
                dz[i] = Elem(f32(dz[i]) + step);
            }
        }
    }
}
