pub mod autodiff;
pub mod ir;
