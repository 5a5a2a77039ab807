//! Bad input: batches the host preparation refuses, naming the field and the row;
//! operands the kernels refuse before recording anything; and garbage in the index
//! buffers, which the shader keeps inside every operand.

use super::support::*;
use crate::common::*;
use mmoe_wgpu::kernels::BufferView;
use mmoe_wgpu::kernels::Recorder;
use mmoe_wgpu::kernels::embedding::*;
use mmoe_wgpu::rng::Rng;

#[test]
fn bad_batches_are_errors_naming_the_field_and_the_row() {
    let multi = field(10, 4, true, true, false);
    let w = [1.0f32; 4];
    let new = |ids: &[u32], offsets: &[u32], weights: &[f32]| {
        EmbeddingBatch::new(&multi, "genre", 3, ids, Some(offsets), Some(weights))
    };
    let ids = [1, 2, 3, 4];
    expect_err(
        new(&[1, 2, 10, 3], &[0, 2, 3, 4], &w),
        &["`genre`, row 1", "ID 10", "of 10"],
    );
    expect_err(
        new(&ids, &[0, 3, 2, 4], &w),
        &["`genre`, row 1", "offsets decrease"],
    );
    expect_err(
        new(&ids, &[0, 2, 5, 5], &w),
        &["`genre`, row 1", "past the 4 IDs"],
    );
    expect_err(new(&ids, &[1, 2, 3, 4], &w), &["`genre`, row 0", "not 0"]);
    expect_err(
        new(&ids, &[0, 2, 3, 3], &w),
        &["`genre`, row 2", "last bag ends at ID index 3"],
    );
    expect_err(
        new(&ids, &[0, 2, 4], &w),
        &["`genre`", "`offsets`", "4 CSR offsets"],
    );
    expect_err(
        new(&ids, &[0, 2, 3, 4], &w[..3]),
        &["`genre`", "`weights`", "4 weights"],
    );
    let nan = [1.0, 1.0, f32::NAN, 1.0];
    expect_err(
        new(&ids, &[0, 2, 3, 4], &nan),
        &["`genre`, row 1", "position 2 is NaN"],
    );
    let unweighted = EmbeddingBatch::new(&multi, "genre", 3, &ids, Some(&[0, 2, 3, 4]), None);
    expect_err(unweighted, &["`genre`", "`weights`", "none"]);
    let single = field(10, 4, false, false, false);
    let one = |rows, ids: &[u32], offsets| {
        EmbeddingBatch::new(&single, "country", rows, ids, offsets, None)
    };
    expect_err(one(3, &[1, 2], None), &["`country`", "3 IDs (one per row"]);
    expect_err(
        one(3, &[1, 2, 3], Some(&[0, 1, 2, 3])),
        &["`country`", "single-valued"],
    );
    expect_err(one(2, &[1, 20], None), &["`country`, row 1", "ID 20"]);

    // A batch over its shape's capacities.
    let ids = [1, 1, 1, 4];
    let batch =
        EmbeddingBatch::new(&multi, "genre", 3, &ids, Some(&[0, 3, 3, 4]), Some(&w)).unwrap();
    let fits = batch.shape(4, 0);
    batch.arrays(&fits).unwrap();
    let over = |change: fn(&mut EmbeddingShape), needles: &[&str]| {
        let mut shape = fits;
        change(&mut shape);
        expect_err(batch.arrays(&shape), needles);
    };
    over(
        |s| s.bounds.longest_bag = 2,
        &["`genre`", "bounds.longest_bag", "row 0's bag of 3 IDs"],
    );
    over(
        |s| s.bounds.most_occurrences = 2,
        &["bounds.most_occurrences", "3 occurrences of ID 1"],
    );
    over(|s| s.bounds.ids = 3, &["bounds.ids", "the batch's 4 IDs"]);
    over(
        |s| s.bounds.unique = 1,
        &["bounds.unique", "2 distinct IDs"],
    );
    over(|s| s.rows = 2, &["`rows`", "the batch's 3 rows"]);
    over(|s| s.field.vocab = 11, &["the batch was prepared for"]);
    over(|s| s.column = 1, &["`column`", "width 4"]);
}

#[test]
fn bad_operands_are_errors_and_record_nothing() {
    let gpu = gpu();
    let embedding = Embedding::new(gpu);
    let f = field(20, 5, true, false, true);
    let batch = random_batch(&mut Rng::new(3), &f, 9);
    let shape = batch.shape(8, 2);
    let up = Uploaded::new(gpu, &batch.arrays(&shape).unwrap());
    let tables = ["t", "m", "m2"]
        .map(|name| EmbeddingTableBuffers::with_chunk_rows(gpu, name, 20, 5, 8).unwrap());
    let chunks = tables.each_ref().map(|t| t.views());
    let table = EmbeddingTable::new(&chunks[0], 8);
    let x = gpu.upload("x", &vec![7.0f32; shape.x_len()]).unwrap();
    let scratch = gpu
        .storage_buffer("scratch", 4 * shape.scratch_len() as u64)
        .unwrap();
    let short = gpu.storage_buffer("short", 8).unwrap();
    let grad = gpu
        .storage_buffer("grad", 4 * shape.grad_len() as u64)
        .unwrap();
    let good = up.forward(shape, table, Some(&scratch), &x);
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let mut budget = shape;
    budget.bounds.longest_bag = 70_000;
    let forward_fails: [(EmbeddingForward, &[&str]); 7] = [
        (
            EmbeddingForward {
                scratch: None,
                ..good
            },
            &["`scratch`", "3 chunks"],
        ),
        (
            EmbeddingForward {
                offsets: None,
                ..good
            },
            &["`offsets`", "multi-valued"],
        ),
        (
            EmbeddingForward {
                weights: Some(BufferView::new(&x)),
                ..good
            },
            &["`weights`", "weighted"],
        ),
        (
            EmbeddingForward {
                table: EmbeddingTable::new(&chunks[0][..2], 8),
                ..good
            },
            &["3 chunks of 8 rows"],
        ),
        (
            EmbeddingForward {
                x: BufferView::new(&short),
                ..good
            },
            &["`x`", "bytes"],
        ),
        (
            EmbeddingForward {
                shape: budget,
                ..good
            },
            &["loop iterations", "longest_bag", "65535"],
        ),
        (
            EmbeddingForward {
                x: BufferView::new(&scratch),
                ..good
            },
            &["`scratch`", "same buffer"],
        ),
    ];
    for (args, needles) in forward_fails {
        expect_err(embedding.encode_forward(&mut encoder, &args), needles);
    }
    let backward = up.backward(shape, &x, &grad);
    expect_err(
        embedding.encode_backward(
            &mut encoder,
            &EmbeddingBackward {
                offsets: None,
                ..backward
            },
        ),
        &["embedding backward", "`offsets`"],
    );
    let alias = EmbeddingBackward {
        grad: BufferView::new(&x),
        ..backward
    };
    expect_err(
        embedding.encode_backward(&mut encoder, &alias),
        &["`dx`", "same buffer"],
    );
    let update = EmbeddingUpdate {
        shape,
        optimizer: ADAM,
        unique_ids: BufferView::new(&up.unique_ids),
        grad: BufferView::new(&grad),
        table,
        m: EmbeddingTable::new(&chunks[1], 8),
        v: Some(EmbeddingTable::new(&chunks[2], 8)),
        status: None,
    };
    let bad_beta = SparseOptimizer::LazyAdam {
        beta1: 1.0,
        beta2: 0.9,
        eps: 1e-8,
    };
    let update_fails: [(EmbeddingUpdate, &[&str]); 4] = [
        (EmbeddingUpdate { v: None, ..update }, &["`v`", "lazy Adam"]),
        (
            EmbeddingUpdate {
                m: EmbeddingTable::new(&chunks[1][..1], 20),
                ..update
            },
            &["`m`", "split"],
        ),
        (
            EmbeddingUpdate {
                optimizer: bad_beta,
                ..update
            },
            &["beta1"],
        ),
        (
            EmbeddingUpdate {
                grad: BufferView::new(&short),
                ..update
            },
            &["`grad`", "chunk 0"],
        ),
    ];
    for (args, needles) in update_fails {
        expect_err(embedding.encode_update(&mut encoder, &args), needles);
    }
    let scatter = EmbeddingScatter {
        shape,
        unique_ids: BufferView::new(&up.unique_ids),
        grad: BufferView::new(&grad),
        dense: EmbeddingTable::new(&chunks[1][..2], 8),
    };
    expect_err(
        embedding.encode_scatter(&mut encoder, &scatter),
        &["`dense`", "3 chunks"],
    );
    for (workgroup_size, columns) in [(0, 1), (64, 5), (64, 0), (1 << 20, 1)] {
        let tiling = EmbeddingTiling {
            workgroup_size,
            columns,
        };
        expect_err(Embedding::with_tiling(gpu, tiling), &["embedding tiling"]);
    }
    // Nothing was recorded: the encoder runs clean and x is as it was.
    gpu.queue().submit([encoder.finish()]);
    gpu.wait().unwrap();
    assert_eq!(read(gpu, &x, shape.x_len()), vec![7.0; shape.x_len()]);
}

#[test]
fn garbage_in_the_index_buffers_stays_inside_every_operand() {
    let gpu = gpu();
    let embedding = Embedding::new(gpu);
    let rng = &mut Rng::new(11);
    for f in [
        field(30, 5, true, true, true),
        field(30, 6, false, true, false),
    ] {
        let rows = 20;
        let ids = if f.multi_valued { 50 } else { rows };
        let bounds = EmbeddingBounds {
            ids,
            longest_bag: 8,
            unique: 40,
            most_occurrences: 9,
        };
        let shape = EmbeddingShape {
            field: f,
            rows,
            width: f.dim + 4,
            column: 2,
            bounds,
        };
        // Half huge values, half small ones that are sometimes valid.
        let mut garbage = |n: usize| -> Vec<u32> {
            let mut pick = |_| match rng.below(2) {
                0 => rng.next_u64() as u32,
                _ => rng.below(70) as u32,
            };
            (0..n).map(&mut pick).collect()
        };
        let arrays = EmbeddingArrays {
            ids: garbage(ids),
            offsets: if f.multi_valued {
                garbage(rows + 1)
            } else {
                Vec::new()
            },
            weights: vec![0.5; ids],
            unique_ids: garbage(40),
            unique_offsets: garbage(41),
            occurrences: garbage(2 * ids),
        };
        let up = Uploaded::new(gpu, &arrays);
        // Outputs sit 12 bytes into buffers of canaries, inside their bindings' slack.
        const CANARY: f32 = 777.0;
        let canaries = |len: usize| gpu.upload("canaries", &vec![CANARY; len + 8]).unwrap();
        let (x, dx, grad) = (
            canaries(shape.x_len()),
            canaries(shape.x_len()),
            canaries(shape.grad_len()),
        );
        let (scratch, table0) = (
            canaries(shape.scratch_len()),
            random(rng, shape.table_len(), 1.0),
        );
        let tables = ["table", "m", "v"].map(|name| {
            let t = EmbeddingTableBuffers::with_chunk_rows(gpu, name, 30, f.dim, 11).unwrap();
            t.write(gpu, &table0).unwrap();
            t
        });
        let chunks = tables.each_ref().map(|t| t.views());
        let at = |b| BufferView::at(b, 12);
        let table_of = |i: usize| EmbeddingTable::new(&chunks[i], 11);
        let mut forward = up.forward(shape, table_of(0), Some(&scratch), &x);
        (forward.x, forward.scratch) = (at(&x), Some(at(&scratch)));
        let mut backward = up.backward(shape, &dx, &grad);
        (backward.dx, backward.grad) = (at(&dx), at(&grad));
        let mut dispatches = embedding.forward(&forward).unwrap();
        dispatches.push(embedding.backward(&backward).unwrap());
        let step = embedding
            .update(&EmbeddingUpdate {
                shape,
                optimizer: ADAM,
                unique_ids: BufferView::new(&up.unique_ids),
                grad: at(&grad),
                table: table_of(0),
                m: table_of(1),
                v: Some(table_of(2)),
                status: None,
            })
            .unwrap();
        step.set_step(gpu.queue(), 1, 0.1);
        run(gpu, |e| {
            dispatches.iter().for_each(|d| e.record_dispatch(d));
            step.encode(e);
        });
        gpu.check().unwrap();
        let got_x = read(gpu, &x, shape.x_len() + 8);
        let (c0, c1) = (shape.column, shape.column + f.dim);
        for (i, &v) in got_x.iter().enumerate() {
            let inside =
                (3..3 + shape.x_len()).contains(&i) && (c0..c1).contains(&((i - 3) % shape.width));
            assert!(
                if inside { v.is_finite() } else { v == CANARY },
                "{f:?}: x word {i} is {v}"
            );
        }
        let got_grad = read(gpu, &grad, shape.grad_len() + 8);
        assert!(
            got_grad[..3]
                .iter()
                .chain(&got_grad[3 + shape.grad_len()..])
                .all(|&v| v == CANARY)
        );
        assert!(got_grad.iter().all(|v| v.is_finite()), "{f:?}: grad");
        // Only the rows some unique ID names may change.
        let named: Vec<usize> = arrays.unique_ids.iter().map(|&id| id as usize).collect();
        let updated = tables[0].read(gpu).unwrap();
        for (e, (&got, &was)) in updated.iter().zip(&table0).enumerate() {
            assert!(
                got == was || named.contains(&(e / f.dim)),
                "{f:?}: table element {e}"
            );
        }
    }
}
