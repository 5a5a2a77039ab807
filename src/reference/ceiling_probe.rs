//! The ceiling probe's register-only kernel in `f64`: what each invocation of
//! `fma_chains` writes (see `shaders/ceiling_probe.wgsl`).

/// The four values invocation `i` of `fma_chains` writes, for every `i` below
/// `invocations`: eight chains `c = c·scale + offset`, `iterations` steps each, from
/// the invocation's starting points, summed.
pub fn fma_chains(invocations: usize, iterations: u32, scale: f64, offset: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(4 * invocations);
    for i in 0..invocations {
        let s = (i & 1023) as f64 / 1024.0;
        for lane in 0..4 {
            let start = s * 0.125 * (lane + 1) as f64;
            let sum: f64 = (0..8)
                .map(|chain| {
                    let mut c = start + 0.0625 * chain as f64;
                    for _ in 0..iterations {
                        c = c * scale + offset;
                    }
                    c
                })
                .sum();
            out.push(sum);
        }
    }
    out
}
