// What the device can do at best, measured by two probes the benches run beside the
// kernels so that their speeds read as fractions of it (src/gpu/ceiling.rs):
//
//   fma_chains:  registers only. Each invocation runs eight independent vec4 chains
//                c = fma(c, a, b), interleaved so that every FMA has seven others to
//                overlap with, and writes their sum once (so nothing is optimised
//                away). Counted as 8 · 4 · 2 flops per iteration.
//   stream_copy: bandwidth. dst[i] = src[i] over vec4s in a grid-stride loop, on
//                buffers far larger than any cache. Counted as 32 bytes per vec4
//                (one read, one write).
//
// `a`, `b` and the trip count come from a uniform the compiler cannot see through,
// and the chains start from the invocation index, so no chain can be folded.

struct ProbeParams {
    // fma_chains: invocations that run (the rest of the last workgroup returns).
    invocations: u32,
    // fma_chains: iterations of the loop.
    iterations: u32,
    // stream_copy: vec4 elements to copy.
    count: u32,
    // stream_copy: invocations in the whole dispatch, the grid-stride loop's step.
    stride: u32,
    // vec4 offsets of each operand inside its binding.
    src_base: u32,
    dst_base: u32,
    // fma_chains: c = c·scale + offset.
    scale: f32,
    offset: f32,
}

@group(0) @binding(0) var<uniform> P: ProbeParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn fma_chains(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= P.invocations) {
        return;
    }
    let a = vec4<f32>(P.scale);
    let b = vec4<f32>(P.offset);
    // Distinct starting points per chain and invocation, all in [0, 1).
    let s = f32(id.x & 1023u) * (1.0 / 1024.0);
    var c0 = vec4<f32>(s, s, s, s) * vec4<f32>(0.125, 0.25, 0.375, 0.5);
    var c1 = c0 + vec4<f32>(0.0625);
    var c2 = c0 + vec4<f32>(0.125);
    var c3 = c0 + vec4<f32>(0.1875);
    var c4 = c0 + vec4<f32>(0.25);
    var c5 = c0 + vec4<f32>(0.3125);
    var c6 = c0 + vec4<f32>(0.375);
    var c7 = c0 + vec4<f32>(0.4375);
    for (var i = 0u; i < P.iterations; i++) {
        c0 = fma(c0, a, b);
        c1 = fma(c1, a, b);
        c2 = fma(c2, a, b);
        c3 = fma(c3, a, b);
        c4 = fma(c4, a, b);
        c5 = fma(c5, a, b);
        c6 = fma(c6, a, b);
        c7 = fma(c7, a, b);
    }
    dst[P.dst_base + id.x] = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7));
}

@compute @workgroup_size(WG)
fn stream_copy(@builtin(global_invocation_id) id: vec3<u32>) {
    for (var i = id.x; i < P.count; i += P.stride) {
        dst[P.dst_base + i] = src[P.src_base + i];
    }
}
