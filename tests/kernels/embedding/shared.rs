//! Fields sharing a table: each field's backward laid out over the union of their
//! IDs, the second accumulating, gives the sum of their gradients; and a sparse step
//! given the dense optimizer's non-finite-loss status changes nothing once it is set.

use super::support::*;
use crate::common::*;
use mmoe_wgpu::kernels::BufferView;
use mmoe_wgpu::kernels::embedding::*;
use mmoe_wgpu::reference::embedding as reference;
use mmoe_wgpu::rng::Rng;

#[test]
fn fields_sharing_a_table_sum_their_gradients_over_the_union_of_their_ids() {
    let gpu = gpu();
    let embedding = Embedding::new(gpu);
    let rng = &mut Rng::new(31);
    let (a_field, b_field) = (
        field(40, 6, true, true, true),
        field(40, 6, false, false, false),
    );
    let rows = 23;
    let a = random_batch(rng, &a_field, rows);
    let b = random_batch(rng, &b_field, rows);
    let union = union_ids(&[&a, &b]);
    // Field a at columns 1..7, field b at 9..15 of one 17-wide input.
    let unique = union.len() + 3;
    let mut a_shape = a.shape(17, 1);
    let mut b_shape = b.shape(17, 9);
    a_shape.bounds.unique = unique;
    b_shape.bounds.unique = unique;
    let up_a = Uploaded::new(gpu, &a.arrays_over(&a_shape, &union).unwrap());
    let up_b = Uploaded::new(gpu, &b.arrays_over(&b_shape, &union).unwrap());
    let dx0 = random(rng, a_shape.x_len(), 1.0);
    let dx = gpu.upload("dx", &dx0).unwrap();
    let grad = gpu.upload("grad", &vec![f32::NAN; unique * 6]).unwrap();
    let mut second = up_b.backward(b_shape, &dx, &grad);
    second.accumulate = true;
    record(
        gpu,
        &[
            embedding
                .backward(&up_a.backward(a_shape, &dx, &grad))
                .unwrap(),
            embedding.backward(&second).unwrap(),
        ],
    );
    let got = read(gpu, &grad, unique * 6);

    let mut want = vec![0.0f64; union.len() * 6];
    for (shape, batch) in [(&a_shape, &a), (&b_shape, &b)] {
        let (ids, g) = reference::backward(shape, batch, &to_f64(&dx0)).unwrap();
        for (u, id) in ids.iter().enumerate() {
            let at = union.iter().position(|x| x == id).unwrap();
            for c in 0..6 {
                want[at * 6 + c] += g[u * 6 + c];
            }
        }
    }
    let (touched, padding) = got.split_at(want.len());
    assert_close("shared table gradient", touched, &want, 1e-5);
    assert!(
        padding.iter().all(|&g| g == 0.0),
        "padding rows: {padding:?}"
    );
}

#[test]
fn a_guarded_sparse_step_changes_nothing_once_the_status_is_set() {
    let gpu = gpu();
    let embedding = Embedding::new(gpu);
    let rng = &mut Rng::new(32);
    let f = field(30, 5, true, false, false);
    let batch = random_batch(rng, &f, 11);
    let shape = batch.shape(5, 0);
    let up = Uploaded::new(gpu, &batch.arrays(&shape).unwrap());
    let grad = gpu
        .upload("grad", &random(rng, shape.grad_len(), 1.0))
        .unwrap();
    let table0 = random(rng, shape.table_len(), 1.0);
    for (status, moves) in [(0u32, true), (7, false)] {
        let tables: Vec<EmbeddingTableBuffers> = (0..3)
            .map(|i| EmbeddingTableBuffers::new(gpu, &format!("t{i}"), 30, 5).unwrap())
            .collect();
        tables[0].write(gpu, &table0).unwrap();
        let views: Vec<Vec<BufferView>> = tables.iter().map(|t| t.views()).collect();
        let status_buffer = gpu.upload("status", &[status, 0, 0]).unwrap();
        let step = embedding
            .update(&EmbeddingUpdate {
                shape,
                optimizer: ADAM,
                unique_ids: BufferView::new(&up.unique_ids),
                grad: BufferView::new(&grad),
                table: EmbeddingTable::new(&views[0], 30),
                m: EmbeddingTable::new(&views[1], 30),
                v: Some(EmbeddingTable::new(&views[2], 30)),
                status: Some(BufferView::new(&status_buffer)),
            })
            .unwrap();
        step.set_step(gpu.queue(), 1, 0.1);
        record(gpu, step.dispatches());
        let after = tables[0].read(gpu).unwrap();
        let m = tables[1].read(gpu).unwrap();
        if moves {
            assert_ne!(bits(&after), bits(&table0), "status 0: the step applies");
        } else {
            assert_eq!(
                bits(&after),
                bits(&table0),
                "status {status}: the table moved"
            );
            assert!(
                m.iter().all(|&v| v == 0.0),
                "status {status}: the moment moved"
            );
        }
    }
}
