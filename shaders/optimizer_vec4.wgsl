// Lanes part of optimizer.wgsl: the operands as arrays of vec4, each unit of four
// elements one load or store. The host picks this part when every operand's offset is
// a multiple of four elements (so each `*_base` divides by 4) and every binding holds
// the partial last unit whole; its lanes past the operand's end are read, never
// written.

@group(0) @binding(2) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grads: array<vec4<Elem>>;
@group(0) @binding(4) var<storage, read_write> moment1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> moment2: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> params_copy: array<vec4<Elem>>;

fn load_params(q: u32) -> vec4<f32> {
    return params[P.p_base / 4u + q];
}

fn load_grads(q: u32) -> vec4<f32> {
    return vec4<f32>(grads[P.g_base / 4u + q]);
}

fn load_moment1(q: u32) -> vec4<f32> {
    return moment1[P.m_base / 4u + q];
}

fn load_moment2(q: u32) -> vec4<f32> {
    return moment2[P.v_base / 4u + q];
}

// Stores of a partial unit write its lanes one by one, without a loop (each loop
// iteration counts against lavapipe's budget per invocation): the lanes past the
// operand's end may belong to another tensor of the caller's.
fn store_params(q: u32, x: vec4<f32>) {
    let at = P.p_base / 4u + q;
    let n = lanes(q);
    if (n == 4u) {
        params[at] = x;
    } else {
        params[at].x = x.x;
        if (n > 1u) {
            params[at].y = x.y;
        }
        if (n > 2u) {
            params[at].z = x.z;
        }
    }
    if ((P.flags & FLAG_COPY) != 0u) {
        let c = P.copy_base / 4u + q;
        let y = vec4<Elem>(x);
        if (n == 4u) {
            params_copy[c] = y;
        } else {
            params_copy[c].x = y.x;
            if (n > 1u) {
                params_copy[c].y = y.y;
            }
            if (n > 2u) {
                params_copy[c].z = y.z;
            }
        }
    }
}

fn store_moment1(q: u32, x: vec4<f32>) {
    let at = P.m_base / 4u + q;
    let n = lanes(q);
    if (n == 4u) {
        moment1[at] = x;
    } else {
        moment1[at].x = x.x;
        if (n > 1u) {
            moment1[at].y = x.y;
        }
        if (n > 2u) {
            moment1[at].z = x.z;
        }
    }
}

fn store_moment2(q: u32, x: vec4<f32>) {
    let at = P.v_base / 4u + q;
    let n = lanes(q);
    if (n == 4u) {
        moment2[at] = x;
    } else {
        moment2[at].x = x.x;
        if (n > 1u) {
            moment2[at].y = x.y;
        }
        if (n > 2u) {
            moment2[at].z = x.z;
        }
    }
}
