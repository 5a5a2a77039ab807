// One optimizer step over one flat parameter buffer, in one dispatch.
//
//   sgd:   m = μ·m + g;  p −= lr·m
//   adam:  g' = g (+ wd·p with FLAG_L2);  m = β1·m + (1 − β1)·g';  v = β2·v + (1 − β2)·g'²;
//          p −= lr·wd·p (FLAG_DECOUPLED, AdamW);  p −= lr·(m/(1 − β1^t)) / (sqrt(v/(1 − β2^t)) + eps)
//
// Element-wise, so the result does not depend on how elements map to invocations.
// A grid-stride loop covers any length with at most max_compute_workgroups_per_dimension
// workgroups.
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
    // Invocations in the whole dispatch: the grid-stride loop's step.
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
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<Elem>;
// First moment (Adam) or velocity (SGD).
@group(0) @binding(4) var<storage, read_write> moment1: array<f32>;
// Second moment (Adam only).
@group(0) @binding(5) var<storage, read_write> moment2: array<f32>;
@group(0) @binding(6) var<storage, read> loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> status: array<u32>;
@group(0) @binding(8) var<storage, read_write> params_copy: array<Elem>;

override WG: u32 = 64u;

// NaN or ±inf, by the exponent bits, so no fast-math assumption can fold it away.
fn non_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

// Whether this step must leave params and moments untouched. Only invocation 0
// writes status, and only when a loss is non-finite, in which case no invocation
// reads status: there is no race.
fn store_param(i: u32, p: f32) {
    params[P.p_base + i] = p;
    if ((P.flags & FLAG_COPY) != 0u) {
        params_copy[P.copy_base + i] = Elem(p);
    }
}

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
    for (var i = id.x; i < P.len; i += P.stride) {
        let m = mu * moment1[P.m_base + i] + f32(grads[P.g_base + i]);
        moment1[P.m_base + i] = m;
        store_param(i, params[P.p_base + i] - S.lr * m);
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
    for (var i = id.x; i < P.len; i += P.stride) {
        var p = params[P.p_base + i];
        var g = f32(grads[P.g_base + i]);
        if (l2) {
            g = g + wd * p;
        }
        let m = P.beta1 * moment1[P.m_base + i] + P.one_minus_beta1 * g;
        let v = P.beta2 * moment2[P.v_base + i] + P.one_minus_beta2 * (g * g);
        moment1[P.m_base + i] = m;
        moment2[P.v_base + i] = v;
        if (decoupled) {
            p = p - S.lr * wd * p;
        }
        p = p - S.lr * (m * S.inv_bc1) / (sqrt(v * S.inv_bc2) + P.eps);
        store_param(i, p);
    }
}
