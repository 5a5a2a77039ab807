// Per-task loss and its gradient in one dispatch.
//
// Layouts, row-major:
//   predictions, targets, grad  [tasks, rows]  (task-major: the heads' outputs), stored
//                               as `Elem` (f32 or f16, set by storage_*.wgsl)
//   loss                        [tasks], always f32: a mean over many rows, and what
//                               the optimizer's non-finite guard reads
//   table                       [tasks] of (kind, weight λ_t, partner), uploaded by
//                               the host
//
//   loss[t]    = λ_t · mean_b ℓ(p[t, b], y[t, b])
//   grad[t, b] = λ_t / rows · ℓ'(p[t, b], y[t, b])
//
// An ESMM pair (CTR task c, CVR task v, logits a = p[c, b], b = p[v, b]) replaces
// task v's loss by the CTCVR loss of sigmoid(a)·sigmoid(b) against y[c, b]·y[v, b],
// which depends on both logits: task v's workgroup writes its loss and ∂/∂b, and
// task c's workgroup, besides its own BCE, recomputes the CTCVR loss's ∂/∂a for its
// gradient row. Each gradient element has one writer, so the pair still takes this
// one dispatch and stays reproducible.
//
// One workgroup per task. Invocation i handles rows i, i + WG, i + 2·WG, ... in that
// order, summing its losses sequentially; the WG partial sums are then added by a
// fixed-shape tree in workgroup memory. No atomics: for a given WG the result is
// bitwise reproducible.

struct LossParams {
    tasks: u32,
    rows: u32,
    // Element offsets of each operand inside its binding (bindings start at the
    // device's offset alignment, operands anywhere after it).
    pred_base: u32,
    target_base: u32,
    loss_base: u32,
    grad_base: u32,
    _pad0: u32,
    _pad1: u32,
}

struct TaskEntry {
    // KIND_MSE, KIND_BCE, KIND_ESMM_CTR or KIND_ESMM_CTCVR.
    kind: u32,
    weight: f32,
    // The other task of an ESMM pair (0 otherwise).
    partner: u32,
    _pad: u32,
}

const KIND_MSE: u32 = 0u;
const KIND_BCE: u32 = 1u;
// BCE on its own logit (the click), plus the pair's CTCVR ∂/∂a in its gradient.
const KIND_ESMM_CTR: u32 = 2u;
// The pair's CTCVR loss, and its ∂/∂b.
const KIND_ESMM_CTCVR: u32 = 3u;
const LN_2: f32 = 0.6931471805599453;

@group(0) @binding(0) var<uniform> P: LossParams;
@group(0) @binding(1) var<storage, read> table: array<TaskEntry>;
@group(0) @binding(2) var<storage, read> predictions: array<Elem>;
@group(0) @binding(3) var<storage, read> targets: array<Elem>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad: array<Elem>;

// Invocations per workgroup; a power of two (the host checks).
override WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

// log(1 + x) for x in [−1/2, 1], as 2·atanh(s) with s = x / (2 + x) in [−1/3, 1/3]:
// an odd series whose truncation error is below 2e-9 relative. Built from + and × only, so
// it is accurate for tiny x (where log(1 + x) loses everything) on every driver,
// whatever the precision of its log.
fn log1p_unit(x: f32) -> f32 {
    let s = x / (2.0 + x);
    let s2 = s * s;
    var poly = 1.0 / 15.0;
    poly = fma(poly, s2, 1.0 / 13.0);
    poly = fma(poly, s2, 1.0 / 11.0);
    poly = fma(poly, s2, 1.0 / 9.0);
    poly = fma(poly, s2, 1.0 / 7.0);
    poly = fma(poly, s2, 1.0 / 5.0);
    poly = fma(poly, s2, 1.0 / 3.0);
    poly = fma(poly, s2, 1.0);
    return 2.0 * s * poly;
}

// log(1 + e^x) for any finite x, accurate for large negative x.
fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log1p_unit(exp(-abs(x)));
}

// 1 / (1 + e^−x), accurate in both tails.
fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

// ESMM's CTCVR loss of p = sigmoid(a)·sigmoid(b) against y, and its derivatives:
// (ℓ, ∂ℓ/∂a, ∂ℓ/∂b). The product is never formed (it rounds to 1, or to 0, long
// before the logits are extreme):
//   log p       = −softplus(−a) − softplus(−b)                 (no cancellation)
//   log(1 − p)  = log1p(−exp(log p))            where p < 1/2  (exp(log p) ≤ 1/2)
//               = log(sigmoid(−a) + sigmoid(a)·sigmoid(−b))    otherwise, as a
//                 log-sum-exp of two positive terms, where 1 − exp(log p) cancels
//   ∂ℓ/∂a       = −y·sigmoid(−a) + (1 − y)·exp(−softplus(a) + log p − log(1 − p))
// the last exponent being log(sigmoid(−a)·p/(1 − p)) ≤ 0; the same with b.
fn ctcvr_loss_and_derivatives(a: f32, b: f32, y: f32) -> vec3<f32> {
    let log_p = -softplus(-a) - softplus(-b);
    var log_q: f32;
    if (log_p < -LN_2) {
        log_q = log1p_unit(-exp(log_p));
    } else {
        let u = -softplus(a);
        let v = -softplus(-a) - softplus(b);
        log_q = max(u, v) + log1p_unit(exp(-abs(u - v)));
    }
    let l = -y * log_p - (1.0 - y) * log_q;
    let odds = log_p - log_q;
    let da = -y * sigmoid(-a) + (1.0 - y) * exp(-softplus(a) + odds);
    let db = -y * sigmoid(-b) + (1.0 - y) * exp(-softplus(b) + odds);
    return vec3(l, da, db);
}

// (ℓ, ℓ') of one prediction p against its target y, for a task of its own (and the
// own BCE of an ESMM pair's CTR task).
fn loss_and_derivative(kind: u32, p: f32, y: f32) -> vec2<f32> {
    if (kind != KIND_MSE) {
        // Binary cross-entropy on the logit p, in the form that never overflows:
        // ℓ = max(p, 0) − p·y + log(1 + e^−|p|),  ℓ' = sigmoid(p) − y.
        // With e = e^−|p| and small = sigmoid(−|p|) = e / (1 + e) (accurate), the
        // derivative is small − y for p < 0 and (1 − y) − small for p ≥ 0, which
        // keeps it accurate when sigmoid(p) rounds to 1 and y = 1.
        let e = exp(-abs(p));
        let small = e / (1.0 + e);
        let d = select(small - y, (1.0 - y) - small, p >= 0.0);
        let l = max(p, 0.0) - p * y + log1p_unit(e);
        return vec2(l, d);
    }
    // Mean squared error: ℓ = (p − y)², ℓ' = 2(p − y).
    let d = p - y;
    return vec2(d * d, 2.0 * d);
}

@compute @workgroup_size(WG)
fn loss_forward_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.x;
    let entry = table[t];
    let rows = P.rows;
    let grad_scale = entry.weight / f32(rows);
    let partner_scale = table[entry.partner].weight / f32(rows);
    var acc = 0.0;
    for (var b = lid; b < rows; b += WG) {
        let i = t * rows + b;
        let p = f32(predictions[P.pred_base + i]);
        let y = f32(targets[P.target_base + i]);
        var l: f32;
        var d: f32;
        if (entry.kind == KIND_ESMM_CTCVR) {
            // p is the CVR logit (b above; not the row); the partner holds a and the
            // click.
            let j = entry.partner * rows + b;
            let a = f32(predictions[P.pred_base + j]);
            let click = f32(targets[P.target_base + j]);
            let ld = ctcvr_loss_and_derivatives(a, p, click * y);
            l = ld.x;
            d = grad_scale * ld.z;
        } else {
            let ld = loss_and_derivative(entry.kind, p, y);
            l = ld.x;
            d = grad_scale * ld.y;
            if (entry.kind == KIND_ESMM_CTR) {
                // p is the CTR logit, a; the partner holds the CVR logit and the conversion.
                let j = entry.partner * rows + b;
                let b_logit = f32(predictions[P.pred_base + j]);
                let conversion = f32(targets[P.target_base + j]);
                d += partner_scale * ctcvr_loss_and_derivatives(p, b_logit, y * conversion).y;
            }
        }
        acc += l;
        grad[P.grad_base + i] = Elem(d);
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        loss[P.loss_base + t] = entry.weight * (partial[0] / f32(rows));
    }
}
