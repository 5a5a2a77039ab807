//! Which rows each step trains on, from the seed alone: training on 1, 2 or 4
//! processes sees the same global batches in the same order, and a job resumed from
//! a checkpoint at step `s` continues with batch `s`.

use crate::rng::Rng;
use crate::{Error, Result};

/// Sub-stream of the seed the epochs' orders come from.
const ORDER_STREAM: u64 = 0x6261_7463_685f_6f72; // "batch_or"

/// The global batches of a data set of `rows` rows: epochs of
/// `rows / batch` full batches (the remainder of each epoch's order is left out), each
/// epoch in its own seeded shuffle.
#[derive(Clone, Debug)]
pub struct GlobalBatches {
    seed: u64,
    rows: usize,
    batch: usize,
    epoch: Option<(u64, Vec<usize>)>,
}

impl GlobalBatches {
    /// Batches of `batch` rows out of `rows`, shuffled by `seed`. Err if a batch is
    /// empty or larger than the data.
    pub fn new(seed: u64, rows: usize, batch: usize) -> Result<GlobalBatches> {
        if batch == 0 || batch > rows {
            return Err(Error::invalid(
                "GlobalBatches::new",
                format!("global batch of {batch} rows from a data set of {rows} rows"),
            ));
        }
        Ok(GlobalBatches {
            seed,
            rows,
            batch,
            epoch: None,
        })
    }

    /// Full batches per epoch.
    pub fn per_epoch(&self) -> usize {
        self.rows / self.batch
    }

    /// The row indices of the batch of step `step` (0-based: the batch the trainer
    /// at step count `step` trains on next).
    pub fn rows_of_step(&mut self, step: u64) -> &[usize] {
        let per_epoch = self.per_epoch() as u64;
        let epoch = step / per_epoch;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.rows).collect();
            Rng::new(self.seed)
                .fork(ORDER_STREAM)
                .fork(epoch)
                .shuffle(&mut order);
            self.epoch = Some((epoch, order));
        }
        let start = (step % per_epoch) as usize * self.batch;
        let (_, order) = self
            .epoch
            .as_ref()
            .expect("the epoch's order was just made");
        &order[start..start + self.batch]
    }
}

/// The rows of a global batch of `rows` rows that rank `rank` of `ranks` trains on: a
/// contiguous share, sizes differing by at most one.
pub fn shard(rows: usize, rank: usize, ranks: usize) -> std::ops::Range<usize> {
    rows * rank / ranks..rows * (rank + 1) / ranks
}
