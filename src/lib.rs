pub mod autodiff;
pub mod ir;
pub mod train;
