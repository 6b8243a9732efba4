//! Training: the data pipeline, checkpoints and the run's outputs around the `Trainer`.
//!
//! `data` turns a folder of paired images into batches, `checkpoint` saves and restores a
//! run, and `report` writes `losses.csv`, image grids, the loss plot and `index.html`.

pub mod atomic;
pub mod checkpoint;
pub mod data;
pub mod fetch;
pub mod progress;
pub mod report;
pub mod run;
