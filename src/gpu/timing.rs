//! Timing recorded GPU work: timestamp queries where the device has them, wall time
//! around a full device sync otherwise.

use std::time::Duration;
#[cfg(not(target_arch = "wasm32"))]
use std::time::Instant;

use super::Gpu;
use crate::{Error, Result};

/// Where a measured time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSource {
    /// GPU timestamps written at the start and end of the compute pass.
    GpuTimestamps,
    /// Host wall time from submit to the end of a full device sync.
    WallClock,
}

impl std::fmt::Display for TimeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeSource::GpuTimestamps => "GPU timestamps",
            TimeSource::WallClock => "wall clock with device sync",
        })
    }
}

/// A measured duration and how it was measured.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Total time of all repetitions.
    pub total: Duration,
    /// How `total` was measured.
    pub source: TimeSource,
}

impl Gpu {
    /// How [`time_pass`](Self::time_pass) measures on this device.
    pub fn time_source(&self) -> TimeSource {
        if self.capabilities().timestamps {
            TimeSource::GpuTimestamps
        } else {
            TimeSource::WallClock
        }
    }

    /// Records `record` `repetitions` times into one compute pass, submits it once and
    /// measures it. Earlier work is finished first so it is not counted. Native only:
    /// it waits for the device (on the web, [`Error::Blocking`]).
    #[cfg(target_arch = "wasm32")]
    pub fn time_pass(
        &self,
        _repetitions: u32,
        _record: impl FnMut(&mut wgpu::ComputePass<'_>),
    ) -> Result<Timing> {
        Err(Error::blocking(
            "Gpu::time_pass",
            "time kernels on a native backend",
        ))
    }

    /// Records `record` `repetitions` times into one compute pass, submits it once and
    /// measures it. Earlier work is finished first so it is not counted. Native only:
    /// it waits for the device (on the web, [`Error::Blocking`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time_pass(
        &self,
        repetitions: u32,
        mut record: impl FnMut(&mut wgpu::ComputePass<'_>),
    ) -> Result<Timing> {
        self.wait()?;
        let device = self.device();
        let queries = match self.time_source() {
            TimeSource::GpuTimestamps => Some(self.scoped("creating timestamp queries", || {
                let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("mmoe-wgpu timing"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                });
                let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("mmoe-wgpu timing resolve"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                (set, resolve)
            })?),
            TimeSource::WallClock => None,
        };
        let start = Instant::now();
        self.scoped("recording timed work", || {
            let mut encoder =
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("mmoe-wgpu timed pass"),
                    timestamp_writes: queries.as_ref().map(|(set, _)| {
                        wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        }
                    }),
                });
                for _ in 0..repetitions {
                    record(&mut pass);
                }
            }
            if let Some((set, resolve)) = &queries {
                encoder.resolve_query_set(set, 0..2, resolve, 0);
            }
            self.queue().submit([encoder.finish()]);
        })?;
        self.wait()?;
        let wall = start.elapsed();
        let Some((_, resolve)) = queries else {
            return Ok(Timing {
                total: wall,
                source: TimeSource::WallClock,
            });
        };
        let stamps: Vec<u64> = self.read(&resolve, 0, 2)?;
        let ticks = stamps[1].checked_sub(stamps[0]).ok_or_else(|| Error::Gpu {
            during: "reading timestamps".into(),
            message: format!("end timestamp {} precedes start {}", stamps[1], stamps[0]),
        })?;
        let nanos = ticks as f64 * self.queue().get_timestamp_period() as f64;
        Ok(Timing {
            total: Duration::from_nanos(nanos as u64),
            source: TimeSource::GpuTimestamps,
        })
    }
}
