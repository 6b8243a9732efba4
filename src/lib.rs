pub mod codegen;
pub mod frontend;
pub mod infer;
pub mod ir;
pub mod passes;
pub mod reference;
pub mod runtime;
pub mod train;
