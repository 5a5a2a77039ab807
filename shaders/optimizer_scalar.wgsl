// Lanes part of optimizer.wgsl: the operands as scalar arrays, each lane of a unit
// loaded and stored on its own, for operands at any offset in any buffer. Lanes past
// the operand's end load its last element again (never out of the binding) and are
// not stored.

@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<Elem>;
@group(0) @binding(4) var<storage, read_write> moment1: array<f32>;
@group(0) @binding(5) var<storage, read_write> moment2: array<f32>;
@group(0) @binding(8) var<storage, read_write> params_copy: array<Elem>;

// Offsets of unit q's four lanes from its first element, the ones past the operand's
// end pulled back onto its last element.
fn lane_offsets(q: u32) -> vec4<u32> {
    let last = lanes(q) - 1u;
    return vec4<u32>(0u, min(1u, last), min(2u, last), min(3u, last));
}

fn load_params(q: u32) -> vec4<f32> {
    let i = P.p_base + 4u * q + lane_offsets(q);
    return vec4<f32>(params[i.x], params[i.y], params[i.z], params[i.w]);
}

fn load_grads(q: u32) -> vec4<f32> {
    let i = P.g_base + 4u * q + lane_offsets(q);
    return vec4<f32>(f32(grads[i.x]), f32(grads[i.y]), f32(grads[i.z]), f32(grads[i.w]));
}

fn load_moment1(q: u32) -> vec4<f32> {
    let i = P.m_base + 4u * q + lane_offsets(q);
    return vec4<f32>(moment1[i.x], moment1[i.y], moment1[i.z], moment1[i.w]);
}

fn load_moment2(q: u32) -> vec4<f32> {
    let i = P.v_base + 4u * q + lane_offsets(q);
    return vec4<f32>(moment2[i.x], moment2[i.y], moment2[i.z], moment2[i.w]);
}

// Stores write the unit's lanes inside the operand, without a loop (each loop
// iteration counts against lavapipe's budget per invocation).
fn store_params(q: u32, x: vec4<f32>) {
    let at = P.p_base + 4u * q;
    let n = lanes(q);
    params[at] = x.x;
    if (n > 1u) {
        params[at + 1u] = x.y;
    }
    if (n > 2u) {
        params[at + 2u] = x.z;
    }
    if (n > 3u) {
        params[at + 3u] = x.w;
    }
    if ((P.flags & FLAG_COPY) != 0u) {
        let c = P.copy_base + 4u * q;
        params_copy[c] = Elem(x.x);
        if (n > 1u) {
            params_copy[c + 1u] = Elem(x.y);
        }
        if (n > 2u) {
            params_copy[c + 2u] = Elem(x.z);
        }
        if (n > 3u) {
            params_copy[c + 3u] = Elem(x.w);
        }
    }
}

fn store_moment1(q: u32, x: vec4<f32>) {
    let at = P.m_base + 4u * q;
    let n = lanes(q);
    moment1[at] = x.x;
    if (n > 1u) {
        moment1[at + 1u] = x.y;
    }
    if (n > 2u) {
        moment1[at + 2u] = x.z;
    }
    if (n > 3u) {
        moment1[at + 3u] = x.w;
    }
}

fn store_moment2(q: u32, x: vec4<f32>) {
    let at = P.v_base + 4u * q;
    let n = lanes(q);
    moment2[at] = x.x;
    if (n > 1u) {
        moment2[at + 1u] = x.y;
    }
    if (n > 2u) {
        moment2[at + 2u] = x.z;
    }
    if (n > 3u) {
        moment2[at + 3u] = x.w;
    }
}
