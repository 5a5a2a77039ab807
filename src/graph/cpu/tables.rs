//! The CPU executor's embedding tables: lookups through the reference, the compact
//! gradient of each table (summed over its lookups), and the tables' optimizer steps.

use std::collections::BTreeMap;

use super::CpuExecutor;
use crate::graph::{Graph, Op};
use crate::reference;
use crate::shape::{EmbeddingBatch, EmbeddingShape};
use crate::{Error, Result};

/// The tables of `graph` in `f64`: values, optimizer state, last gradient.
#[derive(Clone, Debug, Default)]
pub(super) struct Tables {
    values: Vec<Vec<f64>>,
    state: Vec<Vec<Vec<f64>>>,
    /// Per table, the touched IDs (ascending) and their gradient rows of the last
    /// backward pass.
    grads: Vec<(Vec<u32>, Vec<f64>)>,
    /// The batch of each lookup, fed with [`CpuExecutor::set_lookups`].
    batches: Vec<EmbeddingBatch>,
}

impl Tables {
    /// Zero tables, their state at its starting value.
    pub(super) fn new(graph: &Graph, optimizer: &crate::shape::OptimizerConfig) -> Self {
        let tables = graph.tables();
        Tables {
            values: tables.iter().map(|t| vec![0.0; t.len()]).collect(),
            state: tables
                .iter()
                .map(|t| {
                    let first = t.optimizer.initial_state() as f64;
                    (0..t.state_tables(optimizer))
                        .map(|i| vec![if i == 0 { first } else { 0.0 }; t.len()])
                        .collect()
                })
                .collect(),
            grads: vec![Default::default(); tables.len()],
            batches: Vec::new(),
        }
    }
}

impl CpuExecutor {
    /// Feeds the batch of each lookup, in [`Graph::lookups`] order, for the forward
    /// passes that follow (each must have the batch's rows).
    pub fn set_lookups(&mut self, batches: &[EmbeddingBatch]) -> Result<()> {
        self.graph
            .check_lookup_batches("CpuExecutor::set_lookups", batches)?;
        self.tables.batches = batches.to_vec();
        Ok(())
    }

    /// The values of table `table`, `[vocab, dim]`.
    pub fn table(&self, table: usize) -> &[f64] {
        &self.tables.values[table]
    }

    /// The values of table `table`, to load or perturb them.
    pub fn table_mut(&mut self, table: usize) -> &mut [f64] {
        &mut self.tables.values[table]
    }

    /// The optimizer state tables of table `table` (see
    /// [`Table::state_tables`](crate::graph::Table::state_tables)).
    pub fn table_state(&self, table: usize) -> &[Vec<f64>] {
        &self.tables.state[table]
    }

    /// The gradient of table `table` at the last backward pass: the IDs the batch
    /// touched, ascending, and their rows `[ids, dim]`.
    pub fn table_gradient(&self, table: usize) -> (&[u32], &[f64]) {
        let (ids, grad) = &self.tables.grads[table];
        (ids, grad)
    }

    /// The forward of a lookup node: its pooled embeddings into the input's columns.
    pub(super) fn lookup_forward(
        &mut self,
        lookup: usize,
        table: usize,
        shape: &EmbeddingShape,
        x: usize,
    ) -> Result<()> {
        let batch = batch_of(&self.graph, &self.tables.batches, lookup, self.rows)?;
        let (table, values) = (&self.tables.values[table], &mut self.values[x]);
        reference::embedding::forward(shape, batch, table, values)
    }

    /// The backward of a lookup node: its share of its table's gradient.
    pub(super) fn lookup_backward(&mut self, node: usize, accumulate: bool) -> Result<()> {
        let Op::Embedding {
            lookup,
            table,
            shape,
            x,
        } = crate::graph::at_rows(&self.graph.nodes()[node], self.rows)
        else {
            unreachable!("an embedding step names a lookup node");
        };
        let batch = batch_of(&self.graph, &self.tables.batches, lookup, self.rows)?;
        let (ids, grad) = reference::embedding::backward(&shape, batch, &self.grad_values[x.0])?;
        let slot = &mut self.tables.grads[table];
        *slot = if accumulate {
            merge(shape.field.dim, (&slot.0, &slot.1), (&ids, &grad))
        } else {
            (ids, grad)
        };
        Ok(())
    }

    /// Every table's optimizer step `step` on its last gradient: the sparse rule on
    /// the touched rows at the tables' learning rate (or `learning_rate`), or the
    /// model's optimizer over the whole table.
    pub(super) fn tables_step(&mut self, step: u32, learning_rate: f64) -> Result<()> {
        for (t, table) in self.graph.tables().iter().enumerate() {
            let (ids, grad) = &self.tables.grads[t];
            let values = &mut self.tables.values[t];
            let (m, v) = match &mut self.tables.state[t][..] {
                [m] => (m, None),
                [m, v] => (m, Some(&mut v[..])),
                _ => unreachable!("one or two state tables"),
            };
            match table.optimizer.sparse() {
                Some(sparse) => {
                    let lr = table
                        .optimizer
                        .learning_rate()
                        .map_or(learning_rate, f64::from);
                    reference::embedding::update(
                        sparse, step, lr, table.dim, ids, grad, values, m, v,
                    )?;
                }
                None => {
                    let mut dense = vec![0.0; table.len()];
                    for (u, &id) in ids.iter().enumerate() {
                        let row = id as usize * table.dim;
                        dense[row..row + table.dim]
                            .copy_from_slice(&grad[u * table.dim..(u + 1) * table.dim]);
                    }
                    reference::optimizer::step(
                        self.optimizer,
                        step,
                        learning_rate,
                        values,
                        &dense,
                        m,
                        v,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The batch fed to lookup `lookup`, which must have `rows` rows.
fn batch_of<'a>(
    graph: &Graph,
    batches: &'a [EmbeddingBatch],
    lookup: usize,
    rows: usize,
) -> Result<&'a EmbeddingBatch> {
    match batches.get(lookup) {
        Some(batch) if batch.rows() == rows => Ok(batch),
        _ => Err(Error::invalid(
            "CpuExecutor::forward",
            format!(
                "lookup `{}` has no batch of {rows} rows (CpuExecutor::set_lookups)",
                graph.lookups()[lookup].name
            ),
        )),
    }
}

/// The sum of two compact gradients of `dim` columns, over the union of their IDs.
fn merge(dim: usize, a: (&[u32], &[f64]), b: (&[u32], &[f64])) -> (Vec<u32>, Vec<f64>) {
    let mut rows: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for (ids, grad) in [a, b] {
        for (u, &id) in ids.iter().enumerate() {
            let row = rows.entry(id).or_insert_with(|| vec![0.0; dim]);
            for (s, g) in row.iter_mut().zip(&grad[u * dim..(u + 1) * dim]) {
                *s += g;
            }
        }
    }
    let ids = rows.keys().copied().collect();
    (ids, rows.into_values().flatten().collect())
}
