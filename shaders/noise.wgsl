// Gate noise of a noisy top-k gate (Shazeer et al. 2017): the logit offset
// ε · softplus(n) and its gradient with respect to the noise logits n.
//
// Layouts: n, ε, offset, dz and dn are all [gates, rows, experts], row-major, stored
// as `Elem` (f32 or f16, set by the storage_*.wgsl file compiled with this one; all
// arithmetic is f32). Elementwise, so the layout only matters to the host.
//
// One invocation per element and no loops: llvmpipe (lavapipe) ends an invocation's
// loops silently after 65,535 iterations in all, and an elementwise kernel has no
// reason to loop. The host spreads the workgroups over x and y when there are more
// than one dimension allows.

struct NoiseParams {
    // Elements of every operand.
    len: u32,
    // Workgroups along x: the element of workgroup (x, y) starts at (y·groups_x + x)·WG.
    groups_x: u32,
    // Element offsets of each operand inside its binding.
    n_base: u32,
    eps_base: u32,
    offset_base: u32,
    dz_base: u32,
    dn_base: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: NoiseParams;
@group(0) @binding(1) var<storage, read> n: array<Elem>;
@group(0) @binding(2) var<storage, read> eps: array<Elem>;
@group(0) @binding(3) var<storage, read_write> logit_offset: array<Elem>;
@group(0) @binding(4) var<storage, read> dz: array<Elem>;
@group(0) @binding(5) var<storage, read_write> dn: array<Elem>;

// Invocations per workgroup.
override WG: u32 = 64u;

// log(1 + u) for u in [0, 1] as 2·atanh(s), s = u / (2 + u) ≤ 1/3: the odd series
// 2·(s + s³/3 + … + s¹⁵/15) is within 2e-9 of it, relative, for every u in range.
// Devices' log is only accurate in absolute terms near 1 (lavapipe's by about 3e-8),
// which would cost small softplus values their leading digits.
fn log1p_small(u: f32) -> f32 {
    let s = u / (2.0 + u);
    let q = s * s;
    var p = 1.0 / 15.0;
    p = fma(p, q, 1.0 / 13.0);
    p = fma(p, q, 1.0 / 11.0);
    p = fma(p, q, 1.0 / 9.0);
    p = fma(p, q, 1.0 / 7.0);
    p = fma(p, q, 1.0 / 5.0);
    p = fma(p, q, 1.0 / 3.0);
    p = fma(p, q, 1.0);
    return 2.0 * s * p;
}

// log(1 + exp(v)) without overflow for large v or loss of precision for very
// negative v.
fn softplus(v: f32) -> f32 {
    return max(v, 0.0) + log1p_small(exp(-abs(v)));
}

// 1 / (1 + exp(−v)), with exp only ever of a non-positive number.
fn sigmoid(v: f32) -> f32 {
    let e = exp(-abs(v));
    let s = 1.0 / (1.0 + e);
    return select(e * s, s, v >= 0.0);
}

fn element(lid: u32, group: vec3<u32>) -> u32 {
    return (group.y * P.groups_x + group.x) * WG + lid;
}

// offset = ε · softplus(n).
@compute @workgroup_size(WG)
fn noise_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let i = element(lid, group);
    if (i >= P.len) {
        return;
    }
    let v = f32(n[P.n_base + i]);
    logit_offset[P.offset_base + i] = Elem(f32(eps[P.eps_base + i]) * softplus(v));
}

// dn = dz · ε · sigmoid(n): softplus' = sigmoid, and the offset adds to the logits,
// so the logits' gradient dz is the offset's.
@compute @workgroup_size(WG)
fn noise_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let i = element(lid, group);
    if (i >= P.len) {
        return;
    }
    let v = f32(n[P.n_base + i]);
    let g = f32(dz[P.dz_base + i]) * f32(eps[P.eps_base + i]);
    dn[P.dn_base + i] = Elem(g * sigmoid(v));
}
