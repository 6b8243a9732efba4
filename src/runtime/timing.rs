//! Per-kernel times of a compiled program, for `netc bench`.
//!
//! Where the device has timestamp queries, one submit records every kernel in its own
//! compute pass with timestamps at the pass's start and end, so the figures are device
//! times without a submit's overhead. A kernel's texture copies run between its pass and
//! the previous one and are reported apart. Without timestamp queries each kernel is
//! submitted on its own and waited for, and its time includes that overhead.

use super::program::{read_with, Program};
use super::{Gpu, RuntimeError};
use crate::codegen::wgsl::RunValues;

/// Maximum timestamps in one query set (the WebGPU limit).
const MAX_QUERIES: u32 = 4096;

/// The method behind the times of [`Program::time_kernels`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingMethod {
    /// Timestamp queries around each kernel's pass, in one submit.
    Timestamps,
    /// One submit per kernel, waited for on the host.
    SubmitPerKernel,
}

impl TimingMethod {
    /// Describes the method for the bench report.
    pub fn describe(self) -> &'static str {
        match self {
            TimingMethod::Timestamps => "timestamp queries, one pass per kernel in one submit",
            TimingMethod::SubmitPerKernel => {
                "one submit per kernel, waited for on the host (the adapter has no timestamp \
                 queries), so each time includes a submit's overhead"
            }
        }
    }
}

/// One kernel's measured time.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub name: String,
    /// Seconds the kernel's dispatch took.
    pub seconds: f64,
    /// Seconds between the previous kernel's end and this kernel's start: its texture
    /// copies (the first kernel's include the copies at the start of the run) and the
    /// pass change. Zero with [`TimingMethod::SubmitPerKernel`], whose kernel times
    /// include the copies.
    pub copy_seconds: f64,
}

impl Program {
    /// Runs every kernel once and times each, with timestamp queries when `gpu` has them.
    /// The run computes what [`Program::run`] computes.
    pub fn time_kernels(
        &self,
        gpu: &Gpu,
        values: &RunValues,
    ) -> Result<(TimingMethod, Vec<KernelTime>), RuntimeError> {
        gpu.queue.write_buffer(&self.run_values, 0, bytemuck::bytes_of(values));
        if gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            Ok((TimingMethod::Timestamps, self.time_with_timestamps(gpu)?))
        } else {
            Ok((TimingMethod::SubmitPerKernel, self.time_with_submits(gpu)?))
        }
    }

    fn time_with_timestamps(&self, gpu: &Gpu) -> Result<Vec<KernelTime>, RuntimeError> {
        // Each query set starts with one mark before its first kernel's copies, then
        // contains the start and end of each kernel's pass.
        let per_set = ((MAX_QUERIES - 1) / 2) as usize;
        let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("time kernels"),
        });
        let mut resolved = Vec::new();
        for (chunk, kernels) in self.kernels.chunks(per_set).enumerate() {
            let count = 1 + 2 * kernels.len() as u32;
            let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            mark(&mut encoder, &set, 0);
            if chunk == 0 {
                for copy in &self.front_copies {
                    copy.encode(&mut encoder);
                }
            }
            for (i, kernel) in kernels.iter().enumerate() {
                for copy in &kernel.copies {
                    copy.encode(&mut encoder);
                }
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&kernel.name),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &set,
                        beginning_of_pass_write_index: Some(1 + 2 * i as u32),
                        end_of_pass_write_index: Some(2 + 2 * i as u32),
                    }),
                });
                kernel.dispatch(&mut pass);
            }
            let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel timestamps"),
                size: u64::from(count) * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(&set, 0..count, &buffer, 0);
            resolved.push((buffer, count as usize));
        }

        // Timestamps are u64 ticks. The read-back copies bytes, so a tick is two f32 words.
        let list: Vec<(&wgpu::Buffer, u64, usize)> =
            resolved.iter().map(|(buffer, count)| (buffer, 0, 2 * count)).collect();
        let words = read_with(gpu, encoder, &list)?;
        let nanos_per_tick = f64::from(gpu.queue.get_timestamp_period());
        let mut times = Vec::with_capacity(self.kernels.len());
        let chunks = self.kernels.chunks(per_set);
        for (kernels, words) in chunks.zip(&words) {
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(words);
            let seconds =
                |from: u64, to: u64| to.saturating_sub(from) as f64 * nanos_per_tick * 1e-9;
            for (i, kernel) in kernels.iter().enumerate() {
                let (before, start, end) = (ticks[2 * i], ticks[1 + 2 * i], ticks[2 + 2 * i]);
                times.push(KernelTime {
                    name: kernel.name.clone(),
                    seconds: seconds(start, end),
                    copy_seconds: seconds(before, start),
                });
            }
        }
        Ok(times)
    }

    fn time_with_submits(&self, gpu: &Gpu) -> Result<Vec<KernelTime>, RuntimeError> {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        for copy in &self.front_copies {
            copy.encode(&mut encoder);
        }
        gpu.queue.submit([encoder.finish()]);
        let mut times = Vec::with_capacity(self.kernels.len());
        for kernel in &self.kernels {
            let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(&kernel.name),
            });
            for copy in &kernel.copies {
                copy.encode(&mut encoder);
            }
            kernel.dispatch(&mut encoder.begin_compute_pass(&Default::default()));
            let start = std::time::Instant::now();
            gpu.queue.submit([encoder.finish()]);
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| RuntimeError::Readback { message: e.to_string() })?;
            times.push(KernelTime {
                name: kernel.name.clone(),
                seconds: start.elapsed().as_secs_f64(),
                copy_seconds: 0.0,
            });
        }
        Ok(times)
    }
}

/// Writes timestamp `index` of `set` with an empty compute pass, which needs only the
/// `TIMESTAMP_QUERY` feature.
fn mark(encoder: &mut wgpu::CommandEncoder, set: &wgpu::QuerySet, index: u32) {
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("timestamp"),
        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: Some(index),
            end_of_pass_write_index: None,
        }),
    });
}
