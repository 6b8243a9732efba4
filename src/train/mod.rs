//! Training: optimizers, learning-rate schedules and the iteration program.

pub mod optimizer;
pub mod schedule;
