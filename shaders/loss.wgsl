// Per-task loss and its gradient in one dispatch.
//
// Layouts, row-major:
//   predictions, targets, grad  [tasks, rows]  (task-major: the heads' outputs), stored
//                               as `Elem` (f32 or f16, set by storage_*.wgsl)
//   loss                        [tasks], always f32: a mean over many rows, and what
//                               the optimizer's non-finite guard reads
//   table                       [tasks] of (kind, weight λ_t), uploaded by the host
//
//   loss[t]    = λ_t · mean_b ℓ(p[t, b], y[t, b])
//   grad[t, b] = λ_t / rows · ℓ'(p[t, b], y[t, b])
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
    // KIND_MSE or KIND_BCE.
    kind: u32,
    weight: f32,
}

const KIND_MSE: u32 = 0u;
const KIND_BCE: u32 = 1u;

@group(0) @binding(0) var<uniform> P: LossParams;
@group(0) @binding(1) var<storage, read> table: array<TaskEntry>;
@group(0) @binding(2) var<storage, read> predictions: array<Elem>;
@group(0) @binding(3) var<storage, read> targets: array<Elem>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad: array<Elem>;

// Invocations per workgroup; a power of two (the host checks).
override WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

// log(1 + x) for x in [0, 1], as 2·atanh(s) with s = x / (2 + x) in [0, 1/3]: an odd
// series whose truncation error is below 2e-9 relative. Built from + and × only, so
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

// (ℓ, ℓ') of one prediction p against its target y.
fn loss_and_derivative(kind: u32, p: f32, y: f32) -> vec2<f32> {
    if (kind == KIND_BCE) {
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
    var acc = 0.0;
    for (var b = lid; b < rows; b += WG) {
        let i = t * rows + b;
        let ld = loss_and_derivative(
            entry.kind,
            f32(predictions[P.pred_base + i]),
            f32(targets[P.target_base + i]),
        );
        acc += ld.x;
        grad[P.grad_base + i] = Elem(grad_scale * ld.y);
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
