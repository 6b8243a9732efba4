pub mod ir;
pub mod codegen;
