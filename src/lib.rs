pub mod autodiff;
pub mod ir;
pub mod reference;
pub mod train;
