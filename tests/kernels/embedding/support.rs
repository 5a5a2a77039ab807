//! What the embedding tests share: random batches with empty bags and repeated IDs,
//! a batch's arrays in buffers, and a whole training run of one field.

use crate::common::*;
use mmoe_wgpu::Gpu;
use mmoe_wgpu::kernels::embedding::*;
use mmoe_wgpu::kernels::{BufferView, Dispatch, Recorder};
use mmoe_wgpu::reference::embedding as reference;
use mmoe_wgpu::rng::Rng;

pub const ADAM: SparseOptimizer = SparseOptimizer::LazyAdam {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
};
pub const ADAGRAD: SparseOptimizer = SparseOptimizer::Adagrad { eps: 1e-10 };

pub fn field(vocab: usize, dim: usize, multi: bool, weighted: bool, mean: bool) -> EmbeddingField {
    let pooling = if mean { Pooling::Mean } else { Pooling::Sum };
    EmbeddingField {
        vocab,
        dim,
        multi_valued: multi,
        weighted,
        pooling,
    }
}

/// A batch with empty bags (every fourth row), bags of up to 6 IDs, and IDs drawn half
/// the time from a few hot ones, so that they repeat within rows and across rows.
pub fn random_batch(rng: &mut Rng, field: &EmbeddingField, rows: usize) -> EmbeddingBatch {
    let vocab = field.vocab as u64;
    let hot: Vec<u32> = (0..3).map(|_| rng.below(vocab) as u32).collect();
    let id = |rng: &mut Rng| {
        if rng.unit() < 0.5 {
            hot[rng.below(3) as usize]
        } else {
            rng.below(vocab) as u32
        }
    };
    let (mut ids, mut offsets) = (Vec::new(), vec![0u32]);
    for r in 0..rows {
        let n = match (field.multi_valued, r % 4) {
            (false, _) => 1,
            (true, 3) => 0,
            _ => 1 + rng.below(6) as usize,
        };
        ids.extend((0..n).map(|_| id(rng)));
        offsets.push(ids.len() as u32);
    }
    let weights: Vec<f32> = (0..ids.len())
        .map(|_| rng.uniform(-1.0, 2.0) as f32)
        .collect();
    let offsets = field.multi_valued.then_some(&offsets[..]);
    let weights = field.weighted.then_some(&weights[..]);
    EmbeddingBatch::new(field, "f", rows, &ids, offsets, weights).unwrap()
}

/// A batch's arrays in buffers of their own.
pub struct Uploaded {
    pub ids: wgpu::Buffer,
    pub offsets: Option<wgpu::Buffer>,
    pub weights: Option<wgpu::Buffer>,
    pub unique_ids: wgpu::Buffer,
    pub unique_offsets: wgpu::Buffer,
    pub occurrences: wgpu::Buffer,
}

impl Uploaded {
    pub fn new(gpu: &Gpu, a: &EmbeddingArrays) -> Uploaded {
        let up = |v: &[u32]| gpu.upload("u32", v).unwrap();
        Uploaded {
            ids: up(&a.ids),
            offsets: (!a.offsets.is_empty()).then(|| up(&a.offsets)),
            weights: (!a.weights.is_empty()).then(|| gpu.upload("w", &a.weights).unwrap()),
            unique_ids: up(&a.unique_ids),
            unique_offsets: up(&a.unique_offsets),
            occurrences: up(&a.occurrences),
        }
    }

    /// Rewrites the buffers with another batch of the same shape.
    pub fn write(&self, gpu: &Gpu, a: &EmbeddingArrays) {
        gpu.write(&self.ids, 0, &a.ids).unwrap();
        if let Some(o) = &self.offsets {
            gpu.write(o, 0, &a.offsets).unwrap();
        }
        if let Some(w) = &self.weights {
            gpu.write(w, 0, &a.weights).unwrap();
        }
        gpu.write(&self.unique_ids, 0, &a.unique_ids).unwrap();
        gpu.write(&self.unique_offsets, 0, &a.unique_offsets)
            .unwrap();
        gpu.write(&self.occurrences, 0, &a.occurrences).unwrap();
    }

    pub fn forward<'a>(
        &'a self,
        shape: EmbeddingShape,
        table: EmbeddingTable<'a>,
        scratch: Option<&'a wgpu::Buffer>,
        x: &'a wgpu::Buffer,
    ) -> EmbeddingForward<'a> {
        EmbeddingForward {
            shape,
            table,
            ids: BufferView::new(&self.ids),
            offsets: self.offsets.as_ref().map(BufferView::new),
            weights: self.weights.as_ref().map(BufferView::new),
            scratch: scratch.map(BufferView::new),
            x: BufferView::new(x),
        }
    }

    pub fn backward<'a>(
        &'a self,
        shape: EmbeddingShape,
        dx: &'a wgpu::Buffer,
        grad: &'a wgpu::Buffer,
    ) -> EmbeddingBackward<'a> {
        EmbeddingBackward {
            shape,
            offsets: self.offsets.as_ref().map(BufferView::new),
            weights: self.weights.as_ref().map(BufferView::new),
            unique_offsets: BufferView::new(&self.unique_offsets),
            occurrences: BufferView::new(&self.occurrences),
            dx: BufferView::new(dx),
            grad: BufferView::new(grad),
            accumulate: false,
        }
    }
}

pub fn record(gpu: &Gpu, dispatches: &[Dispatch]) {
    run(gpu, |encoder| {
        for d in dispatches {
            encoder.record_dispatch(d);
        }
    });
}

/// Every combination of the field's modes over 1, 3, 17, 100 and 257 rows, dims
/// 1 to 17 (none a multiple of 4 but one), vocabularies from 5 to 1000.
pub fn cases() -> Vec<(EmbeddingField, usize)> {
    let mut out = Vec::new();
    for (i, &rows) in [1, 3, 17, 100, 257].iter().enumerate() {
        for mode in 0..6 {
            let dim = [1, 3, 5, 8, 13, 17][(i + mode) % 6];
            let vocab = [5, 40, 1000][(i + mode) % 3];
            let (multi, weighted, mean) = [
                (false, false, false),
                (false, true, false),
                (true, false, false),
                (true, false, true),
                (true, true, false),
                (true, true, true),
            ][mode];
            out.push((field(vocab, dim, multi, weighted, mean), rows));
        }
    }
    out
}

/// What a run of forward, backward and `steps` optimizer steps leaves.
#[derive(Debug, PartialEq)]
pub struct Trained {
    pub x: Vec<u32>,
    pub grad: Vec<u32>,
    pub table: Vec<u32>,
    pub m: Vec<u32>,
    pub v: Vec<u32>,
}

/// Trains one field `steps` steps on fresh batches in one set of dispatches, the
/// tables split in chunks of `chunk_rows`; checks against the reference when asked.
#[allow(clippy::too_many_arguments)]
pub fn train(
    gpu: &Gpu,
    embedding: &Embedding,
    field: EmbeddingField,
    optimizer: SparseOptimizer,
    chunk_rows: usize,
    steps: u32,
    check: bool,
) -> Trained {
    let (rows, lr) = (37, 0.05);
    let bounds = EmbeddingBounds {
        ids: if field.multi_valued { 6 * rows } else { rows },
        longest_bag: 6,
        unique: 6 * rows,
        most_occurrences: 6 * rows,
    };
    let shape = EmbeddingShape {
        field,
        rows,
        width: field.dim + 4,
        column: 3,
        bounds,
    };
    let rng = &mut Rng::new(7);
    let table0 = random(rng, shape.table_len(), 1.0);
    let tables = ["table", "m", "v"].map(|name| {
        EmbeddingTableBuffers::with_chunk_rows(gpu, name, field.vocab, field.dim, chunk_rows)
            .unwrap()
    });
    tables[0].write(gpu, &table0).unwrap();
    let accumulator0 = if optimizer == ADAGRAD { 0.1 } else { 0.0 };
    tables[1].fill(gpu, accumulator0).unwrap();
    let chunks = tables.each_ref().map(|t| t.views());
    let table_of = |i: usize| EmbeddingTable::new(&chunks[i], tables[i].chunk_rows());
    let up = Uploaded::new(
        gpu,
        &random_batch(rng, &field, rows).arrays(&shape).unwrap(),
    );
    let x = gpu.storage_buffer("x", 4 * shape.x_len() as u64).unwrap();
    let dx = gpu.storage_buffer("dx", 4 * shape.x_len() as u64).unwrap();
    let grad = gpu
        .storage_buffer("grad", 4 * shape.grad_len() as u64)
        .unwrap();
    let scratch = gpu
        .storage_buffer("scratch", 4 * shape.scratch_len() as u64)
        .unwrap();
    let forward = embedding
        .forward(&up.forward(shape, table_of(0), Some(&scratch), &x))
        .unwrap();
    let backward = embedding.backward(&up.backward(shape, &dx, &grad)).unwrap();
    let update = embedding
        .update(&EmbeddingUpdate {
            shape,
            optimizer,
            unique_ids: BufferView::new(&up.unique_ids),
            grad: BufferView::new(&grad),
            table: table_of(0),
            m: table_of(1),
            v: optimizer.needs_second_state().then(|| table_of(2)),
            status: None,
        })
        .unwrap();
    let (mut table, mut m, mut v) = (
        to_f64(&table0),
        vec![accumulator0 as f64; table0.len()],
        vec![0.0; table0.len()],
    );
    for step in 1..=steps {
        // The last batch is short: its missing rows pool to zeros.
        let batch = random_batch(rng, &field, if step == steps { rows - 5 } else { rows });
        up.write(gpu, &batch.arrays(&shape).unwrap());
        let dx0 = random(rng, shape.x_len(), 1.0);
        gpu.write(&dx, 0, &dx0).unwrap();
        update.set_step(gpu.queue(), step, lr);
        run(gpu, |e| {
            forward
                .iter()
                .chain([&backward])
                .for_each(|d| e.record_dispatch(d));
            update.encode(e);
        });
        if check {
            let mut want_x = vec![0.0; shape.x_len()];
            reference::forward(&shape, &batch, &table, &mut want_x).unwrap();
            let got_x = read(gpu, &x, shape.x_len());
            let field_cols = |x: &[f32]| -> Vec<f32> {
                x.chunks(shape.width)
                    .flat_map(|r| r[3..3 + field.dim].to_vec())
                    .collect()
            };
            let want_x: Vec<f64> = want_x
                .chunks(shape.width)
                .flat_map(|r| r[3..3 + field.dim].to_vec())
                .collect();
            assert_close(
                &format!("step {step}: x"),
                &field_cols(&got_x),
                &want_x,
                1e-4,
            );
            let (ids, g) = reference::backward(&shape, &batch, &to_f64(&dx0)).unwrap();
            let v_ref = optimizer.needs_second_state().then_some(&mut v[..]);
            reference::update(
                optimizer, step, lr as f64, field.dim, &ids, &g, &mut table, &mut m, v_ref,
            )
            .unwrap();
            let what = format!("{optimizer:?} step {step}");
            assert_close(
                &format!("{what}: table"),
                &tables[0].read(gpu).unwrap(),
                &table,
                1e-4,
            );
            assert_close(
                &format!("{what}: m"),
                &tables[1].read(gpu).unwrap(),
                &m,
                1e-4,
            );
            if optimizer.needs_second_state() {
                assert_close(
                    &format!("{what}: v"),
                    &tables[2].read(gpu).unwrap(),
                    &v,
                    1e-4,
                );
            }
        }
    }
    gpu.check().unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
    Trained {
        x: bits(read(gpu, &x, shape.x_len())),
        grad: bits(read(gpu, &grad, shape.grad_len())),
        table: bits(tables[0].read(gpu).unwrap()),
        m: bits(tables[1].read(gpu).unwrap()),
        v: bits(tables[2].read(gpu).unwrap()),
    }
}

/// A device on the same adapter whose storage bindings hold at most `bytes` bytes.
pub fn small_device(bytes: u64) -> Gpu {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        apply_limit_buckets: false,
        ..Default::default()
    }))
    .expect("the tests need a GPU adapter");
    let mut required_limits = adapter.limits();
    required_limits.max_storage_buffer_binding_size = bytes;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("small bindings"),
        required_limits,
        ..Default::default()
    }))
    .unwrap();
    Gpu::from_device(device, queue)
}
