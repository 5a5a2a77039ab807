//! Gate values for the routing kernel's tests and for the ragged GEMM's, whose row
//! maps the routing kernel makes from them.

use mmoe_wgpu::kernels::routing::RoutingShape;
use mmoe_wgpu::rng::Rng;

/// Gate values as a top-k gate leaves them: per gate and row, `k` experts with a
/// non-zero weight and zeros elsewhere. Every fifth row is left to no expert by every
/// gate, and below k = experts the last expert is never chosen.
pub fn top_k_gates(rng: &mut Rng, shape: &RoutingShape, k: usize) -> Vec<f32> {
    let RoutingShape {
        gates,
        rows,
        experts,
    } = *shape;
    let choosable = if k < experts { experts - 1 } else { experts };
    let mut g = vec![0.0f32; shape.g_len()];
    for t in 0..gates {
        for r in (0..rows).filter(|r| r % 5 != 4) {
            let mut order: Vec<usize> = (0..choosable).collect();
            rng.shuffle(&mut order);
            for &e in order.iter().take(k) {
                g[(t * rows + r) * experts + e] = rng.uniform(0.05, 1.0) as f32;
            }
        }
    }
    g
}
