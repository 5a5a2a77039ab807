//! Routing kernel against the CPU reference: the row map equal, value for value, on
//! awkward shapes (rows with no expert, experts with no row, 1 to 4 gates, k of 1, 2
//! and every expert), for every workgroup size and in f16; bad input rejected.

use crate::common::routing::top_k_gates;
use crate::common::*;
use half::f16;
use mmoe_wgpu::kernels::routing::{Routing, RoutingForward, RoutingShape};
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::reference::routing as reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Error, Gpu};

fn cases() -> Vec<(RoutingShape, usize)> {
    let mut out = Vec::new();
    for (i, &rows) in [1, 3, 17, 100, 257].iter().enumerate() {
        for (j, &experts) in [1, 3, 16].iter().enumerate() {
            let gates = 1 + (i + j) % 4;
            for k in [1, 2, experts] {
                if k <= experts {
                    out.push((
                        RoutingShape {
                            gates,
                            rows,
                            experts,
                        },
                        k,
                    ));
                }
            }
        }
    }
    out
}

fn route_on_gpu(
    gpu: &Gpu,
    routing: &Routing,
    shape: &RoutingShape,
    g: &wgpu::Buffer,
    precision: Precision,
) -> Vec<u32> {
    let routes = gpu
        .storage_buffer("routes", 4 * shape.routes_len() as u64)
        .unwrap();
    let args = RoutingForward {
        shape: *shape,
        precision,
        g: BufferView::new(g),
        routes: BufferView::new(&routes),
    };
    let dispatch = routing.forward(&args).unwrap();
    run(gpu, |e| dispatch.encode(e));
    gpu.read(&routes, 0, shape.routes_len()).unwrap()
}

#[test]
fn the_row_map_equals_the_reference_for_every_workgroup_size() {
    let gpu = gpu();
    let kernels: Vec<Routing> = [1, 8, 64, 256]
        .iter()
        .map(|&wg| Routing::with_workgroup_size(gpu, wg).unwrap())
        .collect();
    for (n, (shape, k)) in cases().into_iter().enumerate() {
        let g = top_k_gates(&mut Rng::new(n as u64), &shape, k);
        let want = reference::route(&shape, &to_f64(&g)).unwrap();
        // The reference's own map is a valid one.
        let routed = reference::routed_rows(&want, shape.experts, shape.rows).unwrap();
        if shape.rows > 4 {
            let idle = shape.rows - 1 - (shape.rows - 5) % 5;
            assert!(routed.iter().all(|r| !r.contains(&(idle as u32))));
        }
        if k < shape.experts {
            assert!(routed[shape.experts - 1].is_empty());
        }
        let buffer = gpu.upload("g", &g).unwrap();
        for routing in &kernels {
            let got = route_on_gpu(gpu, routing, &shape, &buffer, Precision::F32);
            assert_eq!(
                got,
                want,
                "{shape:?} k={k} workgroup size {}",
                routing.workgroup_size()
            );
        }
    }
    gpu.check().unwrap();
}

#[test]
fn f16_gate_values_route_like_f32() {
    let gpu = gpu();
    if !gpu.capabilities().f16 {
        let shape = RoutingShape {
            gates: 1,
            rows: 2,
            experts: 2,
        };
        let g = gpu.storage_buffer("g", 16).unwrap();
        let routes = gpu.storage_buffer("routes", 64).unwrap();
        let e = Routing::new(gpu)
            .forward(&RoutingForward {
                shape,
                precision: Precision::F16,
                g: (&g).into(),
                routes: (&routes).into(),
            })
            .unwrap_err();
        assert!(matches!(e, Error::MissingFeature { .. }), "{e}");
        return;
    }
    let routing = Routing::new(gpu);
    for (n, (shape, k)) in cases().into_iter().enumerate().step_by(3) {
        let g = top_k_gates(&mut Rng::new(100 + n as u64), &shape, k);
        let half: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
        let want = reference::route(&shape, &to_f64(&g)).unwrap();
        let buffer = gpu.upload("g16", &half).unwrap();
        let got = route_on_gpu(gpu, &routing, &shape, &buffer, Precision::F16);
        assert_eq!(got, want, "f16 {shape:?} k={k}");
    }
}

#[test]
fn operands_at_offsets_inside_shared_buffers() {
    let gpu = gpu();
    let shape = RoutingShape {
        gates: 2,
        rows: 37,
        experts: 5,
    };
    let g = top_k_gates(&mut Rng::new(3), &shape, 2);
    let want = reference::route(&shape, &to_f64(&g)).unwrap();
    let mut packed = vec![f32::NAN; 3];
    packed.extend(&g);
    let input = gpu.upload("packed g", &packed).unwrap();
    let out = gpu
        .upload("routes", &vec![7u32; 5 + shape.routes_len() + 3])
        .unwrap();
    let dispatch = Routing::new(gpu)
        .forward(&RoutingForward {
            shape,
            precision: Precision::F32,
            g: BufferView::at(&input, 12),
            routes: BufferView::at(&out, 20),
        })
        .unwrap();
    run(gpu, |e| dispatch.encode(e));
    let all: Vec<u32> = gpu.read(&out, 0, 5 + shape.routes_len() + 3).unwrap();
    assert_eq!(all[5..5 + shape.routes_len()], want[..]);
    assert!(
        all[..5]
            .iter()
            .chain(&all[5 + shape.routes_len()..])
            .all(|&v| v == 7),
        "wrote outside the map"
    );
}

#[test]
fn the_reference_rejects_malformed_maps() {
    let shape = RoutingShape {
        gates: 1,
        rows: 3,
        experts: 2,
    };
    let g = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
    let map = reference::route(&shape, &g).unwrap();
    assert_eq!(map, [2, 1, 0, 2, 1, 2, 0, 1]);
    assert!(reference::route(&shape, &g[..5]).is_err());
    assert!(reference::routed_rows(&map[..7], 2, 3).is_err());
    let mut bad_count = map.clone();
    bad_count[0] = 4;
    assert!(reference::routed_rows(&bad_count, 2, 3).is_err());
    let mut repeated = map.clone();
    repeated[3] = repeated[2];
    assert!(reference::routed_rows(&repeated, 2, 3).is_err());
    let mut outside = map;
    outside[7] = 3;
    assert!(reference::routed_rows(&outside, 2, 3).is_err());
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let gpu = gpu();
    let routing = Routing::new(gpu);
    let shape = RoutingShape {
        gates: 2,
        rows: 4,
        experts: 3,
    };
    let g = gpu.storage_buffer("g", 4 * shape.g_len() as u64).unwrap();
    let routes = gpu
        .storage_buffer("routes", 4 * shape.routes_len() as u64)
        .unwrap();
    let args = RoutingForward {
        shape,
        precision: Precision::F32,
        g: (&g).into(),
        routes: (&routes).into(),
    };
    for (name, bad) in [
        ("gates", RoutingShape { gates: 0, ..shape }),
        ("rows", RoutingShape { rows: 0, ..shape }),
        (
            "experts",
            RoutingShape {
                experts: 0,
                ..shape
            },
        ),
    ] {
        expect_err(
            routing.forward(&RoutingForward { shape: bad, ..args }),
            &[name],
        );
    }
    expect_err(
        routing.forward(&RoutingForward {
            shape: RoutingShape {
                rows: 1 << 20,
                experts: 1 << 12,
                ..shape
            },
            ..args
        }),
        &["element count"],
    );
    expect_err(
        routing.forward(&RoutingForward {
            routes: BufferView::at(&routes, 4),
            ..args
        }),
        &["`routes`"],
    );
    expect_err(
        routing.forward(&RoutingForward {
            g: BufferView::at(&g, 2),
            ..args
        }),
        &["multiple of 4"],
    );
    expect_err(
        routing.forward(&RoutingForward {
            routes: (&g).into(),
            ..args
        }),
        &["distinct buffers"],
    );
    for wg in [0, 3, 1 << 20] {
        let e = Routing::with_workgroup_size(gpu, wg).unwrap_err();
        assert!(e.to_string().contains("workgroup size"), "{e}");
    }
    gpu.check().unwrap();
}
