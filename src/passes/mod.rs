//! Graph and schedule passes that run between the IR and the runtime.

pub mod memory;
