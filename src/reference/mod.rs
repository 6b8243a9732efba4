//! Plain Rust implementations of every op, the oracle for the WGSL kernels.

pub mod grad;
