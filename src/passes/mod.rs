//! Graph and schedule passes that run between the IR and the runtime.

pub mod fusion;
pub mod memory;
pub mod views;
