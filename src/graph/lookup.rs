//! Embedding tables and the lookups that write categorical fields into an input
//! tensor's columns. Tables are trained like parameters but live in buffers of their
//! own, split into row chunks, never in the flat parameter buffer: a step touches a
//! table's batch rows only (or, trained densely, the table alone), whatever its size.

use super::{Graph, Op, Role, TensorId};
use crate::shape::{
    EmbeddingBatch, EmbeddingBounds, EmbeddingField, EmbeddingShape, TableOptimizer,
};
use crate::{Error, Result};

/// An embedding table `[vocab, dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Unique name among tensors and tables, e.g. `embeddings.country.weight`.
    pub name: String,
    /// Rows.
    pub vocab: usize,
    /// Columns.
    pub dim: usize,
    /// How it trains.
    pub optimizer: TableOptimizer,
}

impl Table {
    /// Elements: `vocab · dim`.
    pub fn len(&self) -> usize {
        self.vocab * self.dim
    }

    /// Whether it has no elements (never: tables have a row and a column at least).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// State tables its optimizer keeps, each of the table's shape: the sparse
    /// rule's (lazy Adam 2, Adagrad 1) or, trained densely, the model optimizer's.
    pub fn state_tables(&self, dense: &crate::shape::OptimizerConfig) -> usize {
        match self.optimizer.sparse() {
            Some(sparse) => 1 + sparse.needs_second_state() as usize,
            None => 1 + dense.needs_second_moment() as usize,
        }
    }
}

/// One categorical field's lookup: its node, its table and its name.
#[derive(Clone, Debug, PartialEq)]
pub struct Lookup {
    /// The field's name, as batches and errors give it.
    pub name: String,
    /// Index of its table in [`Graph::tables`].
    pub table: usize,
    /// Index of its [`Op::Embedding`] node in [`Graph::nodes`].
    pub node: usize,
}

impl Graph {
    /// The embedding tables, in creation order.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// The lookups, in creation (and execution) order: executions are fed one batch
    /// of IDs per lookup, in this order.
    pub fn lookups(&self) -> &[Lookup] {
        &self.lookups
    }

    /// The lookups that read table `table`, in order.
    pub fn lookups_of(&self, table: usize) -> impl Iterator<Item = (usize, &Lookup)> {
        self.lookups
            .iter()
            .enumerate()
            .filter(move |(_, l)| l.table == table)
    }

    /// Checks `batches` are one per lookup, in order, each of its lookup's field.
    pub(crate) fn check_lookup_batches(&self, ctx: &str, batches: &[EmbeddingBatch]) -> Result<()> {
        if batches.len() != self.lookups.len() {
            return Err(Error::invalid(
                ctx,
                format!(
                    "{} lookup batches expected, {} given",
                    self.lookups.len(),
                    batches.len()
                ),
            ));
        }
        for (lookup, batch) in self.lookups.iter().zip(batches) {
            let Op::Embedding { shape, .. } = &self.nodes[lookup.node] else {
                unreachable!("a lookup names its node");
            };
            if batch.field() != &shape.field {
                return Err(Error::invalid(
                    ctx,
                    format!(
                        "the batch for lookup `{}` is of {:?}, the lookup's field is {:?}",
                        lookup.name,
                        batch.field(),
                        shape.field
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A new embedding table; returns its index.
    pub fn table(
        &mut self,
        name: &str,
        vocab: usize,
        dim: usize,
        optimizer: TableOptimizer,
    ) -> Result<usize> {
        if self.find(name).is_some() || self.tables.iter().any(|t| t.name == name) {
            return Err(Error::invalid(
                "graph",
                format!("table `{name}` defined twice"),
            ));
        }
        optimizer.validate()?;
        let field = EmbeddingField {
            vocab,
            dim,
            multi_valued: false,
            weighted: false,
            pooling: Default::default(),
        };
        field.validate(name)?;
        self.tables.push(Table {
            name: name.into(),
            vocab,
            dim,
            optimizer,
        });
        Ok(self.tables.len() - 1)
    }

    /// The lookup of field `name` in table `table`, pooled into columns
    /// `column .. column + dim` of the input `x`, with the capacities `bounds` (at the
    /// graph's batch capacity). Lookups come before every other node, so that every
    /// reader of `x` sees the fields; their columns may not overlap.
    pub fn lookup(
        &mut self,
        name: &str,
        table: usize,
        x: TensorId,
        column: usize,
        field: EmbeddingField,
        bounds: EmbeddingBounds,
    ) -> Result<()> {
        let ctx = format!("lookup `{name}`");
        let t = self
            .tables
            .get(table)
            .ok_or_else(|| Error::invalid(&ctx, format!("no table {table}")))?;
        if (t.vocab, t.dim) != (field.vocab, field.dim) {
            return Err(Error::invalid(
                &ctx,
                format!(
                    "the field has {} rows of {}, its table `{}` {} of {}",
                    field.vocab, field.dim, t.name, t.vocab, t.dim
                ),
            ));
        }
        if self.lookups.iter().any(|l| l.name == name) {
            return Err(Error::invalid(&ctx, "defined twice"));
        }
        if self
            .nodes
            .iter()
            .any(|op| !matches!(op, Op::Embedding { .. }))
        {
            return Err(Error::invalid(&ctx, "lookups must come before other nodes"));
        }
        let input = self.tensor(x);
        let width = match (input.role, &input.shape[..]) {
            (Role::Input, &[_, width]) => width,
            _ => {
                return Err(Error::invalid(
                    &ctx,
                    format!("`{}` is not an input of [rows, width]", input.name),
                ));
            }
        };
        let shape = EmbeddingShape {
            field,
            rows: self.capacity,
            width,
            column,
            bounds,
        };
        shape.validate(&ctx)?;
        let overlaps = self.nodes.iter().any(|op| match op {
            Op::Embedding { shape: other, .. } => {
                column < other.column + other.field.dim && other.column < column + field.dim
            }
            _ => false,
        });
        if overlaps {
            return Err(Error::invalid(&ctx, "its columns overlap another lookup's"));
        }
        self.lookups.push(Lookup {
            name: name.into(),
            table,
            node: self.nodes.len(),
        });
        self.nodes.push(Op::Embedding {
            lookup: self.lookups.len() - 1,
            table,
            shape,
            x,
        });
        Ok(())
    }
}
