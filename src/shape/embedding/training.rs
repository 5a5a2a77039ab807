//! How a model's embedding tables train: a sparse optimizer on the rows each batch
//! touches, or the model's dense optimizer over every row.

use super::SparseOptimizer;
use crate::{Error, Result};

/// How the embedding tables of a model train. The step number is the model's: every
/// training step is a step of every table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TableOptimizer {
    /// The model's own optimizer over the whole table, every step: the table's
    /// gradient is zero outside the rows the batch touched, and Adam's moments of
    /// every row decay as they would in the flat parameter buffer (PyTorch's
    /// `nn.Embedding(sparse=False)` under the model's optimizer). Each step costs
    /// `vocab · dim`: for small vocabularies.
    Dense,
    /// Lazy Adam on the touched rows ([`SparseOptimizer::LazyAdam`]; PyTorch's
    /// `SparseAdam`).
    LazyAdam {
        /// `β1`, in `[0, 1)`.
        beta1: f32,
        /// `β2`, in `[0, 1)`.
        beta2: f32,
        /// `eps`, positive.
        eps: f32,
        /// A constant learning rate of the tables' own; `None`: the model's, as
        /// [`Trainer::set_learning_rate`](crate::model::Trainer::set_learning_rate)
        /// moves it.
        learning_rate: Option<f32>,
    },
    /// Adagrad on the touched rows ([`SparseOptimizer::Adagrad`]; PyTorch's
    /// `Adagrad` on a sparse gradient).
    Adagrad {
        /// `eps`, positive.
        eps: f32,
        /// The accumulator's value before the first step (PyTorch's
        /// `initial_accumulator_value`), finite and ≥ 0.
        initial_accumulator: f32,
        /// A constant learning rate of the tables' own; `None`: the model's.
        learning_rate: Option<f32>,
    },
}

impl Default for TableOptimizer {
    /// [`TableOptimizer::LAZY_ADAM`].
    fn default() -> Self {
        TableOptimizer::LAZY_ADAM
    }
}

impl TableOptimizer {
    /// Lazy Adam with PyTorch's defaults (0.9, 0.999, 1e-8) at the model's learning
    /// rate.
    pub const LAZY_ADAM: TableOptimizer = TableOptimizer::LazyAdam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        learning_rate: None,
    };

    /// Adagrad with PyTorch's defaults (eps 1e-10, accumulator from 0) at the
    /// model's learning rate.
    pub const ADAGRAD: TableOptimizer = TableOptimizer::Adagrad {
        eps: 1e-10,
        initial_accumulator: 0.0,
        learning_rate: None,
    };

    /// The sparse update rule, or `None` for [`TableOptimizer::Dense`].
    pub fn sparse(&self) -> Option<SparseOptimizer> {
        match *self {
            TableOptimizer::Dense => None,
            TableOptimizer::LazyAdam {
                beta1, beta2, eps, ..
            } => Some(SparseOptimizer::LazyAdam { beta1, beta2, eps }),
            TableOptimizer::Adagrad { eps, .. } => Some(SparseOptimizer::Adagrad { eps }),
        }
    }

    /// The tables' own learning rate, if they have one.
    pub fn learning_rate(&self) -> Option<f32> {
        match *self {
            TableOptimizer::Dense => None,
            TableOptimizer::LazyAdam { learning_rate, .. }
            | TableOptimizer::Adagrad { learning_rate, .. } => learning_rate,
        }
    }

    /// The value the first state table starts at: Adagrad's initial accumulator, 0
    /// otherwise.
    pub fn initial_state(&self) -> f32 {
        match *self {
            TableOptimizer::Adagrad {
                initial_accumulator,
                ..
            } => initial_accumulator,
            _ => 0.0,
        }
    }

    /// Checks the hyper-parameters are in range.
    pub fn validate(&self) -> Result<()> {
        if let Some(sparse) = self.sparse() {
            sparse.validate()?;
        }
        let bad = |m: String| Err(Error::invalid("table optimizer", format!("{self:?}: {m}")));
        if let Some(lr) = self.learning_rate()
            && !(lr.is_finite() && lr >= 0.0)
        {
            return bad(format!(
                "learning rate {lr} must be finite and not negative"
            ));
        }
        let initial = self.initial_state();
        if !(initial.is_finite() && initial >= 0.0) {
            return bad(format!(
                "initial accumulator {initial} must be finite and not negative"
            ));
        }
        Ok(())
    }
}
