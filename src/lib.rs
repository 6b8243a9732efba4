pub mod ir;
pub mod train;
