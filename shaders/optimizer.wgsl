// One optimizer step over one flat parameter buffer, in one dispatch.
//
//   sgd:   m = μ·m + g;  p −= lr·m
//   adam:  g' = g (+ wd·p with FLAG_L2);  m = β1·m + (1 − β1)·g';  v = β2·v + (1 − β2)·g'²;
//          p −= lr·wd·p (FLAG_DECOUPLED, AdamW);  p −= lr·(m/(1 − β1^t)) / (sqrt(v/(1 − β2^t)) + eps)
//
// Element-wise, so the result does not depend on how elements map to invocations.
// Each invocation updates units of four consecutive elements with vec4 arithmetic
// (the same operations per lane as one element at a time, so the same bits), in a
// grid-stride loop over the units; the last unit may hold fewer than four.
//
// How units are loaded and stored is the lanes part's business, appended to this file:
// - optimizer_vec4.wgsl binds the operands as arrays of vec4 and moves each unit with
//   one load or store (on lavapipe 2.5× faster than four scalar accesses): for
//   operands that start at a multiple of four elements and whose bindings hold whole
//   units (the host checks; the flat parameter buffers are padded to 16 bytes);
// - optimizer_scalar.wgsl binds them as scalar arrays and moves each lane on its own:
//   any offsets, any buffers.
// Both parts declare params (2), grads (3), moment1 (4), moment2 (5) and params_copy
// (8) and define load_params, load_grads, load_moment1, load_moment2 (unit q as a
// vec4; lanes past the end hold whatever, never stored) and store_params,
// store_moment1, store_moment2 (only the unit's lanes inside the operand).
//
// Storage: params and both moments are always f32 (master weights: an f16 parameter
// cannot take updates below 2^-11 of its size, which is most of Adam's steps late in
// training). grads and the optional params_copy are `Elem` (storage_*.wgsl): f16
// gradients from f16 backward kernels, and an f16 copy of the updated parameters for
// f16 forward kernels (FLAG_COPY), written in the same pass.
//
// Per-step values (step t, learning rate, bias corrections) live in their own uniform,
// rewritten by the host before each step; everything else is fixed when the dispatch
// is built.
//
// Non-finite-loss guard (FLAG_GUARD): every invocation reads the T loss values; if one
// is NaN or infinite the step changes nothing, and invocation 0 records the step and
// the loss bits in status if status[0] is still 0. Once status[0] != 0 every later
// step is skipped too.

struct OptParams {
    len: u32,
    flags: u32,
    // Loss values the guard reads (T).
    tasks: u32,
    // Invocations in the whole dispatch: the grid-stride loop's step, in units.
    stride: u32,
    // Element offsets of each operand inside its binding.
    p_base: u32,
    g_base: u32,
    m_base: u32,
    v_base: u32,
    loss_base: u32,
    status_base: u32,
    copy_base: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    // Adam, AdamW: weight decay. SGD: momentum μ.
    decay_or_momentum: f32,
}

struct StepParams {
    // 1-based; 0 means "no step" and leaves everything untouched.
    step: u32,
    lr: f32,
    // 1 / (1 − β1^t) and 1 / (1 − β2^t), computed on the host in f64.
    inv_bc1: f32,
    inv_bc2: f32,
}

const FLAG_GUARD: u32 = 1u;
const FLAG_L2: u32 = 2u;
const FLAG_DECOUPLED: u32 = 4u;
const FLAG_COPY: u32 = 8u;

@group(0) @binding(0) var<uniform> P: OptParams;
@group(0) @binding(1) var<uniform> S: StepParams;
// Bindings 2-5 and 8 (params; grads; moment1, the first moment (Adam) or velocity
// (SGD); moment2, the second moment (Adam only); params_copy): the lanes part.
@group(0) @binding(6) var<storage, read> loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> status: array<u32>;

override WG: u32 = 64u;

// NaN or ±inf, by the exponent bits, so no fast-math assumption can fold it away.
fn non_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

// Units of four elements in the operands, the last one possibly partial.
fn units() -> u32 {
    return (P.len + 3u) / 4u;
}

// Elements of unit q inside the operands: 4, or 1-3 for a partial last unit.
fn lanes(q: u32) -> u32 {
    return min(P.len - 4u * q, 4u);
}

// Whether this step must leave params and moments untouched. Only invocation 0
// writes status, and only when a loss is non-finite, in which case no invocation
// reads status: there is no race.
fn skip_step(gid: u32) -> bool {
    if (S.step == 0u) {
        return true;
    }
    if ((P.flags & FLAG_GUARD) == 0u) {
        return false;
    }
    var bad = false;
    for (var t = 0u; t < P.tasks; t++) {
        bad = bad || non_finite(loss[P.loss_base + t]);
    }
    if (bad) {
        if (gid == 0u && status[P.status_base] == 0u) {
            status[P.status_base] = S.step;
            for (var t = 0u; t < P.tasks; t++) {
                status[P.status_base + 1u + t] = bitcast<u32>(loss[P.loss_base + t]);
            }
        }
        return true;
    }
    return status[P.status_base] != 0u;
}

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) id: vec3<u32>) {
    if (skip_step(id.x)) {
        return;
    }
    let mu = P.decay_or_momentum;
    for (var q = id.x; q < units(); q += P.stride) {
        let m = mu * load_moment1(q) + load_grads(q);
        store_moment1(q, m);
        store_params(q, load_params(q) - S.lr * m);
    }
}

@compute @workgroup_size(WG)
fn adam(@builtin(global_invocation_id) id: vec3<u32>) {
    if (skip_step(id.x)) {
        return;
    }
    let wd = P.decay_or_momentum;
    let l2 = (P.flags & FLAG_L2) != 0u;
    let decoupled = (P.flags & FLAG_DECOUPLED) != 0u;
    for (var q = id.x; q < units(); q += P.stride) {
        var p = load_params(q);
        var g = load_grads(q);
        if (l2) {
            g = g + wd * p;
        }
        let m = P.beta1 * load_moment1(q) + P.one_minus_beta1 * g;
        let v = P.beta2 * load_moment2(q) + P.one_minus_beta2 * (g * g);
        store_moment1(q, m);
        store_moment2(q, v);
        if (decoupled) {
            p = p - S.lr * wd * p;
        }
        p = p - S.lr * (m * S.inv_bc1) / (sqrt(v * S.inv_bc2) + P.eps);
        store_params(q, p);
    }
}
