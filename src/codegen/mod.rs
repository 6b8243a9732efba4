//! WGSL code generation: from scheduled IR kernels to specialised shader text.

pub mod gemm;
