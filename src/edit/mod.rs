//! The edit loop: what changed between two versions of a model, and how the trained
//! parameters of the old version carry over to the new one.
//!
//! Needs: modules that the front end checked. [`diff`] compares two modules layer by
//! layer, and [`train_diff`] their train sections. [`transfer`] matches checkpoint tensors to the parameters of a module by name
//! and shape, and [`restore`] applies that match to a training engine. [`watch`] reports
//! saves of a model file.

pub mod diff;
pub mod layers;
pub mod restore;
pub mod train_diff;
pub mod transfer;
pub mod watch;
