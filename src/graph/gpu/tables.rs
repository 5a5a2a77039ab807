//! The GPU executor's embedding tables: each table, its optimizer state and (trained
//! densely) its gradient in row-chunked buffers of their own; each lookup's batch
//! arrays; the lookups' forward and backward dispatches, and the tables' updates,
//! recorded after the dense optimizer's in the same pass.

use super::GpuExecutor;
use crate::graph::{Graph, Op, at_rows};
use crate::kernels::embedding::{
    Embedding, EmbeddingBackward, EmbeddingForward, EmbeddingScatter, EmbeddingStep,
    EmbeddingTable, EmbeddingTableBuffers, EmbeddingUpdate,
};
use crate::kernels::optimizer::{OptimizerStep, OptimizerUpdate};
use crate::kernels::{BufferView, Dispatch, Optimizer, Precision};
use crate::shape::{EmbeddingBatch, EmbeddingShape, OptimizerConfig, union_ids};
use crate::{Error, Gpu, Result};

/// A table and what trains it.
pub(super) struct TableBuffers {
    weight: EmbeddingTableBuffers,
    state: Vec<EmbeddingTableBuffers>,
    /// The table's gradient, trained densely: zero but for one step's touched rows.
    dense_grad: Option<EmbeddingTableBuffers>,
    /// `[unique]` u32: the IDs the last batch touched, padded.
    unique_ids: wgpu::Buffer,
    /// `[unique, dim]`: their gradient, summed over the table's lookups.
    grad: wgpu::Buffer,
    /// Zeros `[unique, dim]`, scattered over the touched rows of `dense_grad` after
    /// the update, so that it is zero again for the next step.
    zeros: Option<wgpu::Buffer>,
    update: TableUpdate,
}

/// A table's update, bound once.
enum TableUpdate {
    Sparse(EmbeddingStep),
    /// The compact gradient into the table-shaped one, the model's optimizer chunk by
    /// chunk, then zeros over the rows the gradient touched.
    Dense {
        scatter: Vec<Dispatch>,
        steps: Vec<OptimizerStep>,
        clear: Vec<Dispatch>,
    },
}

/// One lookup's batch arrays, at the graph's capacities.
pub(super) struct LookupBuffers {
    ids: wgpu::Buffer,
    offsets: Option<wgpu::Buffer>,
    weights: Option<wgpu::Buffer>,
    unique_offsets: wgpu::Buffer,
    occurrences: wgpu::Buffer,
    /// The gathered rows of a table split in chunks.
    scratch: Option<wgpu::Buffer>,
}

/// Every table and lookup of a graph on the device.
#[derive(Default)]
pub(super) struct Tables {
    tables: Vec<TableBuffers>,
    lookups: Vec<LookupBuffers>,
    /// Per table, the IDs the batch last written touched, ascending.
    unique: Vec<Vec<u32>>,
}

/// The shape of lookup node `node` at the graph's capacity.
fn capacity_shape(graph: &Graph, node: usize) -> EmbeddingShape {
    match &graph.nodes()[node] {
        Op::Embedding { shape, .. } => *shape,
        _ => unreachable!("a lookup names its node"),
    }
}

impl Tables {
    /// Zeroed tables (their first state table at the optimizer's starting value) and
    /// every lookup's buffers; each table's update bound with the guard's `loss` and
    /// `status` (`tasks` losses).
    pub(super) fn new(
        gpu: &Gpu,
        graph: &Graph,
        optimizer: OptimizerConfig,
        (loss, status, tasks): (Option<BufferView<'_>>, BufferView<'_>, usize),
    ) -> Result<Tables> {
        let bytes = |n: usize| 4 * n as u64;
        let embedding = Embedding::new(gpu);
        let mut out = Tables {
            unique: vec![Vec::new(); graph.tables().len()],
            ..Default::default()
        };
        for (t, table) in graph.tables().iter().enumerate() {
            let Some((_, first)) = graph.lookups_of(t).next() else {
                return Err(Error::invalid(
                    "GpuExecutor::new",
                    format!("table `{}` has no lookup", table.name),
                ));
            };
            let shape = capacity_shape(graph, first.node);
            let weight = EmbeddingTableBuffers::new(gpu, &table.name, table.vocab, table.dim)?;
            let like = |label: String| {
                EmbeddingTableBuffers::with_chunk_rows(
                    gpu,
                    &label,
                    table.vocab,
                    table.dim,
                    weight.chunk_rows(),
                )
            };
            let state = (0..table.state_tables(&optimizer))
                .map(|i| like(format!("{} state {i}", table.name)))
                .collect::<Result<Vec<_>>>()?;
            let initial = table.optimizer.initial_state();
            if initial != 0.0 {
                state[0].fill(gpu, initial)?;
            }
            let unique = shape.bounds.unique;
            let unique_ids = gpu.storage_buffer("unique IDs", bytes(unique))?;
            let grad = gpu.storage_buffer("table gradient", bytes(unique * table.dim))?;
            let rows = weight.chunk_rows();
            let weight_views = weight.views();
            let state_views: Vec<_> = state.iter().map(EmbeddingTableBuffers::views).collect();
            let (dense_grad, zeros, update) = match table.optimizer.sparse() {
                Some(sparse) => {
                    let step = embedding.update(&EmbeddingUpdate {
                        shape,
                        optimizer: sparse,
                        unique_ids: BufferView::new(&unique_ids),
                        grad: BufferView::new(&grad),
                        table: EmbeddingTable::new(&weight_views, rows),
                        m: EmbeddingTable::new(&state_views[0], rows),
                        v: state_views.get(1).map(|v| EmbeddingTable::new(v, rows)),
                        status: Some(status),
                    })?;
                    (None, None, TableUpdate::Sparse(step))
                }
                None => {
                    let dense = like(format!("{} gradient", table.name))?;
                    let zeros = gpu.storage_buffer("zeros", bytes(unique * table.dim))?;
                    let dense_views = dense.views();
                    let scatter_from = |grad: &wgpu::Buffer| {
                        embedding.scatter(&EmbeddingScatter {
                            shape,
                            unique_ids: BufferView::new(&unique_ids),
                            grad: BufferView::new(grad),
                            dense: EmbeddingTable::new(&dense_views, rows),
                        })
                    };
                    let (scatter, clear) = (scatter_from(&grad)?, scatter_from(&zeros)?);
                    let steps = (0..weight_views.len())
                        .map(|i| {
                            let chunk = (i * rows)..table.vocab.min((i + 1) * rows);
                            let len = chunk.len() * table.dim;
                            Optimizer::new(gpu).update(&OptimizerUpdate {
                                config: optimizer,
                                len,
                                precision: Precision::F32,
                                params: weight_views[i],
                                grads: dense_views[i],
                                m: state_views[0][i],
                                v: state_views.get(1).map(|v| v[i]),
                                loss,
                                status: loss.map(|_| status),
                                tasks,
                                params_copy: None,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let update = TableUpdate::Dense {
                        scatter,
                        steps,
                        clear,
                    };
                    (Some(dense), Some(zeros), update)
                }
            };
            out.tables.push(TableBuffers {
                weight,
                state,
                dense_grad,
                unique_ids,
                grad,
                zeros,
                update,
            });
        }
        for lookup in graph.lookups() {
            let s = capacity_shape(graph, lookup.node);
            let f = &s.field;
            let buffer = |what: &str, len: usize| {
                gpu.storage_buffer(&format!("`{}` {what}", lookup.name), bytes(len))
            };
            let chunked = out.tables[lookup.table].weight.buffers().len() > 1;
            out.lookups.push(LookupBuffers {
                ids: buffer("ids", s.ids_len())?,
                offsets: f
                    .multi_valued
                    .then(|| buffer("offsets", s.offsets_len()))
                    .transpose()?,
                weights: f
                    .weighted
                    .then(|| buffer("weights", s.ids_len()))
                    .transpose()?,
                unique_offsets: buffer("unique offsets", s.unique_offsets_len())?,
                occurrences: buffer("occurrences", s.occurrences_len())?,
                scratch: chunked
                    .then(|| buffer("scratch", s.scratch_len()))
                    .transpose()?,
            });
        }
        Ok(out)
    }

    /// Every buffer, in two parts: the tables, their state and dense gradients; and
    /// the rest (batch arrays, scratch and compact gradients).
    fn parts(&self) -> (Vec<&wgpu::Buffer>, Vec<&wgpu::Buffer>) {
        let (mut tables, mut rest) = (Vec::new(), Vec::new());
        for t in &self.tables {
            for s in [&t.weight].into_iter().chain(&t.state).chain(&t.dense_grad) {
                tables.extend(s.buffers());
            }
            rest.extend([&t.unique_ids, &t.grad]);
            rest.extend(&t.zeros);
        }
        for l in &self.lookups {
            rest.extend([&l.ids, &l.unique_offsets, &l.occurrences]);
            rest.extend(l.offsets.iter().chain(&l.weights).chain(&l.scratch));
        }
        (tables, rest)
    }

    /// Every buffer, for the device's bind group cache to forget.
    pub(super) fn buffers(&self) -> Vec<&wgpu::Buffer> {
        let (tables, rest) = self.parts();
        [tables, rest].concat()
    }

    /// Bytes of the tables, their state and dense gradients; and of the rest.
    pub(super) fn bytes(&self) -> (u64, u64) {
        let (tables, rest) = self.parts();
        let total = |part: Vec<&wgpu::Buffer>| part.iter().map(|b| b.size()).sum();
        (total(tables), total(rest))
    }

    /// The tables' update dispatches, in order.
    pub(super) fn update_dispatches(&self) -> Vec<&Dispatch> {
        let mut out = Vec::new();
        for t in &self.tables {
            match &t.update {
                TableUpdate::Sparse(step) => out.extend(step.dispatches()),
                TableUpdate::Dense {
                    scatter,
                    steps,
                    clear,
                } => {
                    out.extend(scatter);
                    out.extend(steps.iter().map(OptimizerStep::dispatch));
                    out.extend(clear);
                }
            }
        }
        out
    }
}

impl GpuExecutor {
    /// Writes the batch of each lookup (in [`Graph::lookups`] order) of an execution
    /// of `rows` rows, with what the backward pass and the updates need: per table,
    /// the IDs its lookups touch together. Everything is checked against the
    /// capacities before anything is written.
    pub fn write_lookups(&mut self, rows: usize, batches: &[EmbeddingBatch]) -> Result<()> {
        const CTX: &str = "GpuExecutor::write_lookups";
        self.graph.check_rows(rows)?;
        self.graph.check_lookup_batches(CTX, batches)?;
        let mut unique = Vec::with_capacity(self.graph.tables().len());
        for t in 0..self.graph.tables().len() {
            let of: Vec<&EmbeddingBatch> =
                self.graph.lookups_of(t).map(|(i, _)| &batches[i]).collect();
            unique.push(union_ids(&of));
        }
        let mut arrays = Vec::with_capacity(batches.len());
        for (lookup, batch) in self.graph.lookups().iter().zip(batches) {
            if batch.rows() != rows {
                let want = format!("{rows} rows");
                return Err(Error::shape(
                    CTX,
                    &lookup.name,
                    want,
                    batch.rows().to_string(),
                ));
            }
            let Op::Embedding { shape, .. } = at_rows(&self.graph.nodes()[lookup.node], rows)
            else {
                unreachable!("a lookup names its node");
            };
            arrays.push(batch.arrays_over(&shape, &unique[lookup.table])?);
        }
        for (buffers, a) in self.tables.lookups.iter().zip(&arrays) {
            self.gpu.write(&buffers.ids, 0, &a.ids)?;
            if let Some(offsets) = &buffers.offsets {
                self.gpu.write(offsets, 0, &a.offsets)?;
            }
            if let Some(weights) = &buffers.weights {
                self.gpu.write(weights, 0, &a.weights)?;
            }
            self.gpu
                .write(&buffers.unique_offsets, 0, &a.unique_offsets)?;
            self.gpu.write(&buffers.occurrences, 0, &a.occurrences)?;
        }
        // The lookups of a table hold the same unique IDs: the first one's serve.
        for (t, buffers) in self.tables.tables.iter().enumerate() {
            if let Some((first, _)) = self.graph.lookups_of(t).next() {
                self.gpu
                    .write(&buffers.unique_ids, 0, &arrays[first].unique_ids)?;
            }
        }
        self.tables.unique = unique;
        Ok(())
    }

    fn table_buffers(&self, table: usize) -> Result<&TableBuffers> {
        self.tables.tables.get(table).ok_or_else(|| {
            Error::invalid(
                "GpuExecutor",
                format!(
                    "no table {table}; the graph has {}",
                    self.tables.tables.len()
                ),
            )
        })
    }

    /// Reads table `table`, `[vocab, dim]`.
    pub fn table(&self, table: usize) -> Result<Vec<f32>> {
        self.table_buffers(table)?.weight.read(&self.gpu)
    }

    /// Replaces the values of table `table`, `[vocab, dim]`.
    pub fn set_table(&self, table: usize, values: &[f32]) -> Result<()> {
        self.table_buffers(table)?.weight.write(&self.gpu, values)
    }

    /// Reads the optimizer state tables of table `table` (see
    /// [`Table::state_tables`](crate::graph::Table::state_tables)).
    pub fn table_state(&self, table: usize) -> Result<Vec<Vec<f32>>> {
        let t = self.table_buffers(table)?;
        t.state.iter().map(|s| s.read(&self.gpu)).collect()
    }

    /// Replaces the optimizer state tables of table `table`.
    pub fn set_table_state(&self, table: usize, state: &[Vec<f32>]) -> Result<()> {
        let t = self.table_buffers(table)?;
        if state.len() != t.state.len() {
            return Err(Error::shape(
                "GpuExecutor::set_table_state",
                "state",
                format!("{} tables", t.state.len()),
                format!("{} tables", state.len()),
            ));
        }
        for (buffers, values) in t.state.iter().zip(state) {
            buffers.write(&self.gpu, values)?;
        }
        Ok(())
    }

    /// The gradient of table `table` at the last backward pass: the IDs the batch
    /// touched, ascending, and their rows `[ids, dim]`.
    pub fn table_gradient(&self, table: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        let t = self.table_buffers(table)?;
        let ids = self.tables.unique[table].clone();
        let dim = self.graph.tables()[table].dim;
        let grad = self.gpu.read(&t.grad, 0, ids.len() * dim)?;
        Ok((ids, grad))
    }

    /// Writes each table's step number and learning rate (the model's, or the
    /// tables' own) before a training submission.
    pub(super) fn set_table_steps(&self, step: u32, learning_rate: f32) {
        for (t, table) in self.tables.tables.iter().zip(self.graph.tables()) {
            match &t.update {
                TableUpdate::Sparse(update) => {
                    let lr = table.optimizer.learning_rate().unwrap_or(learning_rate);
                    update.set_step(self.gpu.queue(), step, lr);
                }
                TableUpdate::Dense { steps, .. } => {
                    for s in steps {
                        s.set_step(self.gpu.queue(), step, learning_rate);
                    }
                }
            }
        }
    }

    /// The forward dispatches of lookup node `node` at `rows` rows.
    pub(super) fn lookup_forward(&self, node: usize, rows: usize) -> Result<Vec<Dispatch>> {
        let Op::Embedding {
            lookup,
            table,
            shape,
            x,
        } = at_rows(&self.graph.nodes()[node], rows)
        else {
            unreachable!("a lookup names its node");
        };
        let (t, l) = (&self.tables.tables[table], &self.tables.lookups[lookup]);
        let chunks = t.weight.views();
        Embedding::new(&self.gpu).forward(&EmbeddingForward {
            shape,
            table: EmbeddingTable::new(&chunks, t.weight.chunk_rows()),
            ids: BufferView::new(&l.ids),
            offsets: l.offsets.as_ref().map(BufferView::new),
            weights: l.weights.as_ref().map(BufferView::new),
            scratch: l.scratch.as_ref().map(BufferView::new),
            x: self.view(x),
        })
    }

    /// The backward dispatch of lookup node `node` at `rows` rows.
    pub(super) fn lookup_backward(
        &self,
        node: usize,
        rows: usize,
        accumulate: bool,
    ) -> Result<Dispatch> {
        let Op::Embedding {
            lookup,
            table,
            shape,
            x,
        } = at_rows(&self.graph.nodes()[node], rows)
        else {
            unreachable!("a lookup names its node");
        };
        let (t, l) = (&self.tables.tables[table], &self.tables.lookups[lookup]);
        Embedding::new(&self.gpu).backward(&EmbeddingBackward {
            shape,
            offsets: l.offsets.as_ref().map(BufferView::new),
            weights: l.weights.as_ref().map(BufferView::new),
            unique_offsets: BufferView::new(&l.unique_offsets),
            occurrences: BufferView::new(&l.occurrences),
            dx: self.grad_view(x),
            grad: BufferView::new(&t.grad),
            accumulate,
        })
    }
}
