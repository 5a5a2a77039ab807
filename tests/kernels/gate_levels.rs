//! The gates of an extraction level (PLE): one input block per gate (`X: [gates,
//! rows, inputs]`, or `[gates + 1, …]` for a last level's task gates, whose shared
//! block gets no gradient) and a shared gate that sees every expert beside task gates
//! that see the shared experts and their own. Against the reference, every tiling
//! bitwise, dense and top-k.

use crate::common::gate::{Buffers, NAMES, Outputs, output_bits};
use crate::common::*;
use crate::gate_topk::{MARGIN, data_away_from_ties};
use mmoe_wgpu::Gpu;
use mmoe_wgpu::InputLayout;
use mmoe_wgpu::kernels::gate_mix::{ExpertAccess, GateMix, GateMixShape, GateMixTopK, Selection};
use mmoe_wgpu::reference::gate_topk as reference;

/// Gates, shared experts, experts per task gate, rows, inputs, width, input layout,
/// access, k; awkward sizes.
fn cases() -> Vec<(GateMixShape, ExpertAccess, usize)> {
    let shape = |gates, experts, rows, inputs, width, input| GateMixShape {
        gates,
        experts,
        rows,
        inputs,
        width,
        input,
    };
    let shared_gate = |shared, own, tasks| ExpertAccess::SharedGate { shared, own, tasks };
    let own = |shared, own| ExpertAccess::SharedAndOwn { shared, own };
    let last = |tasks| InputLayout::Level {
        tasks,
        shared: 0,
        own: 1,
    };
    vec![
        // A first level: every gate on the one X, a shared gate.
        (
            shape(3, 4, 17, 7, 5, InputLayout::Shared),
            shared_gate(2, 1, 2),
            3,
        ),
        // A middle level: a block per gate, dense and top-2.
        (
            shape(4, 9, 37, 5, 6, InputLayout::PerGroup),
            shared_gate(3, 2, 3),
            5,
        ),
        (
            shape(4, 9, 3, 13, 16, InputLayout::PerGroup),
            shared_gate(3, 2, 3),
            2,
        ),
        // Stacked MMoE: every gate sees every expert, a block each.
        (
            shape(3, 5, 19, 6, 3, InputLayout::PerGroup),
            ExpertAccess::All,
            5,
        ),
        // A last level: task gates on the task blocks of tasks + 1, top-1.
        (shape(2, 4, 33, 9, 7, last(2)), own(2, 1), 1),
        (shape(3, 7, 1, 1, 1, last(3)), own(1, 2), 3),
    ]
}

fn run_gpu(
    gpu: &Gpu,
    (shape, access, k): (GateMixShape, ExpertAccess, usize),
    d: &crate::common::gate::Data,
    tiling: Option<mmoe_wgpu::kernels::gate_mix::GateMixTiling>,
) -> Outputs<f32> {
    let kernels = GateMix::new(gpu);
    let bufs = Buffers::new(gpu, shape, d);
    let top_k = GateMixTopK {
        access,
        ..GateMixTopK::new(k)
    };
    let f = match tiling {
        Some(t) => kernels.forward_top_k_with(&bufs.forward(), &top_k, t),
        None => kernels.forward_top_k(&bufs.forward(), &top_k),
    }
    .unwrap();
    let b = kernels.backward(&bufs.backward(true)).unwrap();
    run(gpu, |e| {
        f.encode(e);
        b.iter().for_each(|d| d.encode(e));
    });
    bufs.read(gpu)
}

#[test]
fn level_gates_match_the_reference_and_every_tiling_bitwise() {
    level_gates_match_the_reference_and_every_tiling_bitwise_on(gpu());
}

pub(crate) fn level_gates_match_the_reference_and_every_tiling_bitwise_on(gpu: &Gpu) {
    let tilings = GateMix::new(gpu).tilings();
    for (n, (shape, access, k)) in cases().into_iter().enumerate() {
        let what = format!("{shape:?} {access:?} k={k}");
        // Ties are kept apart over every expert, so also over those a gate sees.
        let d = data_away_from_ties(&shape, k.min(shape.experts), 70 + n as u64, 1.0, MARGIN);
        let (x, wg, h) = (to_f64(&d.x), to_f64(&d.wg), to_f64(&d.h));
        let z = reference::logits(&shape, &x, &wg, &to_f64(&d.bg)).unwrap();
        let (g, m) =
            reference::forward_logits_selecting(&shape, k, access, Selection::PerGate, &z, &h)
                .unwrap();
        let grads = reference::backward(&shape, &x, &wg, &h, &g, &to_f64(&d.dm)).unwrap();
        let want = [
            g.clone(),
            m,
            grads.dh,
            grads.dz,
            grads.dwg,
            grads.dbg,
            d.with_prior(grads.dx, true),
        ];
        // What each gate sees and keeps: a shared gate of a dense level all experts.
        for t in 0..shape.gates {
            let kept = (0..shape.experts)
                .filter(|&e| g[t * shape.rows * shape.experts + e] != 0.0)
                .count();
            assert_eq!(kept, access.gate_k(&shape, t, k), "gate {t} of {what}");
            assert!(
                (0..shape.experts)
                    .all(|e| access.sees(t, e) || g[t * shape.rows * shape.experts + e] == 0.0),
                "gate {t} of {what} weighs an expert it does not see"
            );
        }
        let default = run_gpu(gpu, (shape, access, k), &d, None);
        for ((name, got), want) in NAMES.iter().zip(&default).zip(&want) {
            assert_close(&format!("{name} {what}"), got, want, 1e-4);
        }
        for &tiling in &tilings {
            let got = run_gpu(gpu, (shape, access, k), &d, Some(tiling));
            assert!(
                output_bits(&got) == output_bits(&default),
                "{tiling:?} differs bitwise from the default tiling on {what}"
            );
        }
    }
    gpu.check().unwrap();
}

/// The reference's gradients through per-gate inputs against finite differences.
#[test]
fn level_gate_reference_gradients_match_finite_differences() {
    let (shape, access, k) = cases()[1];
    let d = data_away_from_ties(&shape, k, 5, 1.0, MARGIN);
    let p = [to_f64(&d.x), to_f64(&d.wg), to_f64(&d.bg), to_f64(&d.h)];
    let dm = to_f64(&d.dm);
    let loss = |p: &[Vec<f64>; 4]| -> f64 {
        let z = reference::logits(&shape, &p[0], &p[1], &p[2]).unwrap();
        let (_, m) =
            reference::forward_logits_selecting(&shape, k, access, Selection::PerGate, &z, &p[3])
                .unwrap();
        m.iter().zip(&dm).map(|(a, b)| a * b).sum()
    };
    let z = reference::logits(&shape, &p[0], &p[1], &p[2]).unwrap();
    let (g, _) =
        reference::forward_logits_selecting(&shape, k, access, Selection::PerGate, &z, &p[3])
            .unwrap();
    let grads = reference::backward(&shape, &p[0], &p[1], &p[3], &g, &dm).unwrap();
    let analytic = [
        ("dX", &grads.dx[..]),
        ("dWg", &grads.dwg),
        ("dbg", &grads.dbg),
        ("dH", &grads.dh),
    ];
    assert_gradients_match_finite_differences("level gate", &p, analytic, 1e-6, loss);
}
