//! Embedding kernels against the f64 reference: lookups pooled into the input rows,
//! table gradients and sparse Adam / Adagrad on awkward shapes (1 to 257 rows, dims
//! not multiples of 4, single- and multi-valued, sum and mean, weighted, empty bags,
//! duplicate IDs); bitwise identical across runs and tilings; chunked tables bitwise
//! equal to one chunk; the reference's gradient against finite differences; bad input
//! rejected before anything is recorded, and garbage indices kept in bounds; fields
//! sharing a table, and the sparse step's non-finite-loss guard.

mod checks;
mod shared;
mod support;

use crate::common::*;
use mmoe_wgpu::Error;
use mmoe_wgpu::kernels::embedding::*;
use mmoe_wgpu::kernels::{BufferView, Optimizer};
use mmoe_wgpu::reference::embedding as reference;
use mmoe_wgpu::rng::Rng;
use support::*;

#[test]
fn lookups_and_gradients_match_the_reference_on_awkward_shapes() {
    let gpu = gpu();
    let embedding = Embedding::new(gpu);
    for (n, (field, rows)) in cases().into_iter().enumerate() {
        let rng = &mut Rng::new(n as u64);
        let batch = random_batch(rng, &field, rows);
        // Every other case with room to spare: padded IDs, uniques and rows.
        let mut shape = batch.shape(field.dim + 3 + n % 4, 1 + n % 3);
        if n % 2 == 1 {
            shape.bounds.unique += 5;
            shape.bounds.most_occurrences += 2;
            if field.multi_valued {
                shape.bounds.ids += 7;
                shape.bounds.longest_bag += 1;
            }
        }
        let what = format!("{field:?} rows {rows}, {:?}", shape.bounds);
        let up = Uploaded::new(gpu, &batch.arrays(&shape).unwrap());
        let table = random(rng, shape.table_len(), 1.0);
        let tables = EmbeddingTableBuffers::new(gpu, "table", field.vocab, field.dim).unwrap();
        tables.write(gpu, &table).unwrap();
        let chunks = tables.views();
        let x0 = random(rng, shape.x_len(), 1.0);
        let x = gpu.upload("x", &x0).unwrap();
        let args = up.forward(shape, EmbeddingTable::new(&chunks, field.vocab), None, &x);
        record(gpu, &embedding.forward(&args).unwrap());
        let got = read(gpu, &x, shape.x_len());
        let mut want = to_f64(&x0);
        reference::forward(&shape, &batch, &to_f64(&table), &mut want).unwrap();
        let (c0, c1) = (shape.column, shape.column + field.dim);
        for r in 0..rows {
            let row = r * shape.width;
            for c in (0..shape.width).filter(|c| !(c0..c1).contains(c)) {
                assert_eq!(got[row + c], x0[row + c], "{what}: x[{r}, {c}] was touched");
            }
        }
        assert_close(&format!("{what}: x"), &got, &want, 1e-4);

        let dx0 = random(rng, shape.x_len(), 1.0);
        let (dx, grad) = (
            gpu.upload("dx", &dx0).unwrap(),
            gpu.upload("grad", &vec![f32::NAN; shape.grad_len()])
                .unwrap(),
        );
        record(
            gpu,
            &[embedding.backward(&up.backward(shape, &dx, &grad)).unwrap()],
        );
        let got = read(gpu, &grad, shape.grad_len());
        let (ids, want) = reference::backward(&shape, &batch, &to_f64(&dx0)).unwrap();
        assert_eq!(ids, batch.unique_ids(), "{what}: unique IDs");
        let (touched, padding) = got.split_at(want.len());
        assert_close(&format!("{what}: grad"), touched, &want, 1e-4);
        assert!(padding.iter().all(|&g| g == 0.0), "{what}: padding rows");
    }
    gpu.check().unwrap();
}

#[test]
fn the_reference_gradient_matches_finite_differences() {
    for (n, (field, rows)) in cases()
        .into_iter()
        .enumerate()
        .filter(|(_, (f, _))| f.vocab < 1000)
    {
        let rng = &mut Rng::new(100 + n as u64);
        let batch = random_batch(rng, &field, rows.min(17));
        let shape = batch.shape(field.dim + 2, 1);
        let table: Vec<f64> = (0..shape.table_len()).map(|_| rng.normal()).collect();
        let dx: Vec<f64> = (0..shape.x_len()).map(|_| rng.normal()).collect();
        // L = Σ x · dx over the field's columns: its gradient in x is dx.
        let loss = |table: &[f64]| {
            let mut x = vec![0.0; shape.x_len()];
            reference::forward(&shape, &batch, table, &mut x).unwrap();
            x.iter().zip(&dx).map(|(x, d)| x * d).sum::<f64>()
        };
        let (ids, grad) = reference::backward(&shape, &batch, &dx).unwrap();
        let h = 1e-5;
        for i in 0..field.vocab {
            for c in 0..field.dim {
                let mut t = table.clone();
                t[i * field.dim + c] += h;
                let up = loss(&t);
                t[i * field.dim + c] -= 2.0 * h;
                let numeric = (up - loss(&t)) / (2.0 * h);
                let analytic = ids
                    .iter()
                    .position(|&id| id as usize == i)
                    .map_or(0.0, |u| grad[u * field.dim + c]);
                let err = (numeric - analytic).abs();
                assert!(
                    err < 1e-7 * (1.0 + analytic.abs()),
                    "{field:?} row {i} col {c}: {numeric} vs {analytic}"
                );
            }
        }
    }
}

#[test]
fn sparse_adam_and_adagrad_match_the_reference_over_several_steps() {
    let gpu = gpu();
    let embedding = Embedding::new(gpu);
    for optimizer in [ADAM, ADAGRAD] {
        train(
            gpu,
            &embedding,
            field(60, 7, true, true, true),
            optimizer,
            60,
            4,
            true,
        );
        train(
            gpu,
            &embedding,
            field(30, 5, false, false, false),
            optimizer,
            30,
            3,
            true,
        );
    }
}

#[test]
fn results_are_bitwise_identical_across_runs_and_tilings() {
    let gpu = gpu();
    let f = field(50, 11, true, true, true);
    let first = train(gpu, &Embedding::new(gpu), f, ADAM, 50, 2, false);
    assert_eq!(
        first,
        train(gpu, &Embedding::new(gpu), f, ADAM, 50, 2, false),
        "a second run"
    );
    for (workgroup_size, columns) in [(1, 1), (32, 2), (64, 3), (256, 4), (7, 1)] {
        let tiling = EmbeddingTiling {
            workgroup_size,
            columns,
        };
        let embedding = Embedding::with_tiling(gpu, tiling).unwrap();
        assert_eq!(
            first,
            train(gpu, &embedding, f, ADAM, 50, 2, false),
            "{tiling:?}"
        );
    }
}

#[test]
fn chunked_tables_are_bitwise_equal_to_one_chunk() {
    let gpu = gpu();
    let embedding = Embedding::new(gpu);
    for (f, optimizer) in [
        (field(1000, 13, true, true, true), ADAM),
        (field(700, 6, false, true, false), ADAGRAD),
    ] {
        let whole = train(gpu, &embedding, f, optimizer, f.vocab, 3, false);
        for chunk_rows in [1, 7, 333, f.vocab - 1] {
            let split = train(gpu, &embedding, f, optimizer, chunk_rows, 3, false);
            assert_eq!(whole, split, "{f:?}: chunks of {chunk_rows} rows");
        }
        // A device whose bindings hold 16 KiB: 52 KB of table need 4 chunks.
        let small = small_device(1 << 14);
        let rows = max_chunk_rows(&small, f.dim).unwrap();
        assert_eq!(rows, (1 << 14) / (4 * f.dim));
        let chunked = train(
            &small,
            &Embedding::new(&small),
            f,
            optimizer,
            rows,
            3,
            false,
        );
        assert_eq!(whole, chunked, "{f:?} on 16 KiB bindings");
    }
    let small = small_device(1 << 14);
    let e = expect_err(
        max_chunk_rows(&small, 5000),
        &["max_storage_buffer_binding_size"],
    );
    assert!(
        matches!(
            e,
            Error::Limit {
                value: 20000,
                limit: 16384,
                ..
            }
        ),
        "{e}"
    );
    expect_err(
        EmbeddingTableBuffers::with_chunk_rows(&small, "t", 1000, 13, 400),
        &["rows of 13 f32 per chunk", "315"],
    );
}

#[test]
fn a_batch_without_ids_pools_to_zeros_and_has_no_gradient() {
    let gpu = gpu();
    let embedding = Embedding::new(gpu);
    let f = field(6, 5, true, true, true);
    let batch = EmbeddingBatch::new(&f, "f", 3, &[], Some(&[0, 0, 0, 0]), Some(&[])).unwrap();
    assert_eq!(
        (batch.unique_ids(), batch.unique_offsets()),
        (&[][..], &[0][..])
    );
    let shape = batch.shape(7, 1);
    let up = Uploaded::new(gpu, &batch.arrays(&shape).unwrap());
    let tables = EmbeddingTableBuffers::new(gpu, "table", 6, 5).unwrap();
    tables.fill(gpu, 1.0).unwrap();
    let chunks = tables.views();
    let x = gpu.upload("x", &[9.0f32; 21]).unwrap();
    let grad = gpu.upload("grad", &[9.0f32; 5]).unwrap();
    let forward = up.forward(shape, EmbeddingTable::new(&chunks, 6), None, &x);
    let mut dispatches = embedding.forward(&forward).unwrap();
    let dx = gpu.upload("dx", &[1.0f32; 21]).unwrap();
    dispatches.push(embedding.backward(&up.backward(shape, &dx, &grad)).unwrap());
    record(gpu, &dispatches);
    let row = [9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0];
    assert_eq!(read(gpu, &x, 21), row.repeat(3));
    assert_eq!(read(gpu, &grad, 5), [0.0; 5]);
}

#[test]
fn dense_adam_over_a_whole_table_goes_through_the_optimizer() {
    // The compact gradient scattered into a zeroed table-shaped gradient is what the
    // dense optimizer needs; unlike lazy Adam it moves rows the batch did not touch.
    let gpu = gpu();
    let f = field(9, 3, true, false, false);
    let batch = EmbeddingBatch::new(&f, "f", 2, &[4, 1, 4], Some(&[0, 2, 3]), None).unwrap();
    let shape = batch.shape(3, 0);
    let up = Uploaded::new(gpu, &batch.arrays(&shape).unwrap());
    let dx0 = [0.5f32, -1.0, 2.0, 1.0, 1.0, 1.0];
    let dx = gpu.upload("dx", &dx0).unwrap();
    let grad = gpu
        .storage_buffer("grad", 4 * shape.grad_len() as u64)
        .unwrap();
    let dense = EmbeddingTableBuffers::with_chunk_rows(gpu, "dense", 9, 3, 4).unwrap();
    let dense_chunks = dense.views();
    let embedding = Embedding::new(gpu);
    let mut dispatches = vec![embedding.backward(&up.backward(shape, &dx, &grad)).unwrap()];
    dispatches.extend(
        embedding
            .scatter(&EmbeddingScatter {
                shape,
                unique_ids: BufferView::new(&up.unique_ids),
                grad: BufferView::new(&grad),
                dense: EmbeddingTable::new(&dense_chunks, 4),
            })
            .unwrap(),
    );
    record(gpu, &dispatches);
    let (ids, g) = reference::backward(&shape, &batch, &to_f64(&dx0)).unwrap();
    let mut want = vec![0.0; 27];
    for (u, &id) in ids.iter().enumerate() {
        want[id as usize * 3..][..3].copy_from_slice(&g[u * 3..][..3]);
    }
    assert_eq!(
        dense.read(gpu).unwrap(),
        want.iter().map(|&v| v as f32).collect::<Vec<_>>()
    );

    // The table is one flat parameter buffer to the dense optimizer.
    let config = mmoe_wgpu::shape::OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let params = gpu.upload("params", &[1.0f32; 27]).unwrap();
    let grads = gpu
        .upload("grads", &want.iter().map(|&v| v as f32).collect::<Vec<_>>())
        .unwrap();
    let (m, v) = (
        gpu.storage_buffer("m", 108).unwrap(),
        gpu.storage_buffer("v", 108).unwrap(),
    );
    let step = Optimizer::new(gpu)
        .update(&mmoe_wgpu::kernels::optimizer::OptimizerUpdate {
            config,
            len: 27,
            precision: mmoe_wgpu::Precision::F32,
            params: BufferView::new(&params),
            grads: BufferView::new(&grads),
            m: BufferView::new(&m),
            v: Some(BufferView::new(&v)),
            loss: None,
            status: None,
            tasks: 0,
            params_copy: None,
        })
        .unwrap();
    let (mut p, mut m64, mut v64) = (vec![1.0; 27], vec![0.0; 27], vec![0.0; 27]);
    for t in 1..=2 {
        // Step 2 has a zero gradient: dense Adam still moves row 4 by its momentum.
        if t == 2 {
            gpu.write(&grads, 0, &[0.0f32; 27]).unwrap();
            want.fill(0.0);
        }
        step.set_step(gpu.queue(), t, 0.1);
        run(gpu, |e| step.encode(e));
        mmoe_wgpu::reference::optimizer::step(
            config,
            t,
            0.1,
            &mut p,
            &want,
            &mut m64,
            Some(&mut v64),
        )
        .unwrap();
    }
    let got = read(gpu, &params, 27);
    assert_close("dense Adam on the table", &got, &p, 1e-5);
    assert!(
        got[12] < 1.0 - 0.15,
        "row 4 moved on at step 2: {}",
        got[12]
    );
    assert_eq!(got[0..3], [1.0; 3], "row 0 was never touched");
}
