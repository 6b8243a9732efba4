//! The wgpu runtime: adapter choice, the parameter store, and compiled programs.
//!
//! Needs: kernels from [`crate::codegen`]. Guarantees: every pipeline and bind group of a
//! [`Program`] is created once, at compile time. A run writes the per-run uniform block
//! and records every dispatch into one compute pass of one command buffer. It submits
//! that buffer once and reads back only the outputs the caller names.

pub mod affinity;
mod cache;
mod device;
mod params;
pub mod pipeline_cache;
pub mod probe;
mod program;
mod timing;

pub use affinity::Pinning;
pub use cache::{kernel_key, CacheCounts, CachedPipeline, KernelCache};
pub use device::{list_adapters, AdapterSummary, Gpu, LAVAPIPE_HINT};
pub use params::{initial_values, ParamStore};
pub use program::{operand_texture, upload_operand, MemoryReport, Program};
pub use timing::{KernelTime, TimingMethod};

use crate::codegen::CodegenError;

/// A runtime failure. Device-side validation errors are compiler bugs, but they are
/// reported as values so that a user sees the kernel that failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RuntimeError {
    #[error("no GPU adapter found")]
    #[diagnostic(help("{hint}"))]
    NoAdapter { hint: &'static str },
    #[error("no adapter matches {request:?}; available: {available}")]
    #[diagnostic(help(
        "pass a substring of a name that `netc devices` lists to --adapter or NETC_ADAPTER"
    ))]
    AdapterNotFound { request: String, available: String },
    #[error("failed to open a device on adapter {adapter}: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Codegen(#[from] CodegenError),
    #[error("failed to create the pipeline of kernel {kernel}: {message}")]
    Pipeline { kernel: String, message: String },
    #[error(
        "buffer {what} of {bytes} bytes is over this adapter's maxBufferSize of {limit} bytes"
    )]
    BufferTooLarge { what: String, bytes: u64, limit: u64 },
    #[error("the program has no input named {name}; its inputs are: {available}")]
    UnknownInput { name: String, available: String },
    #[error("input {name} expects {expected} values, got {got}")]
    InputLength { name: String, expected: usize, got: usize },
    #[error("the program has no output named {name}; its outputs are: {available}")]
    UnknownOutput { name: String, available: String },
    #[error("parameter {name} expects {expected} values, got {got}")]
    ParamLength { name: String, expected: usize, got: usize },
    #[error("invalid initializer for parameter {param}: {message}")]
    InvalidInit { param: String, message: String },
    /// A compiler bug, or a request for a value that fusion left unstored.
    #[error("output {name} (node {node}) is never computed by the program's kernels")]
    OutputNotComputed { name: String, node: String },
    #[error("invalid {name}={value:?}")]
    #[diagnostic(help("{name} takes {expected}"))]
    InvalidSetting { name: &'static str, value: String, expected: &'static str },
    /// A compiler bug that wgpu's validation caught on the device.
    #[error("the device rejected a command: {message}")]
    #[diagnostic(help("this is a bug in netc; please report it with the model file and flags"))]
    Device { message: String },
    #[error("failed to read results back from the device: {message}")]
    Readback { message: String },
    /// A compiler bug: the training program's arena layout does not fit its module.
    #[error("arena {arena} has no free slot large enough for parameter {name}")]
    ArenaSlot { arena: String, name: String },
}
