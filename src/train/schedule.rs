//! Learning-rate schedules: the rate each optimizer step uses in a given epoch.
//!
//! The rate changes only between epochs, so a run reads it once per epoch (or per
//! iteration, which gives the same value) and passes it to the optimizer kernel as a
//! uniform. Epochs are counted from 0.

use crate::ir::{Optimizer, Schedule};

/// Computes the multiplier of the base learning rate in `epoch`.
///
/// `LinearDecay { constant, decay }` keeps the base rate for `constant` epochs, then
/// lowers it by `1 / (decay + 1)` of the base each epoch. The last decaying epoch
/// (`constant + decay - 1`) still trains at `1 / (decay + 1)` of the base, and the line
/// reaches zero one epoch after it. Later epochs get zero.
pub fn lr_factor(schedule: &Schedule, epoch: usize) -> f32 {
    match *schedule {
        Schedule::Constant => 1.0,
        Schedule::LinearDecay { constant, decay } => {
            if epoch < constant {
                return 1.0;
            }
            let into_decay = (epoch - constant + 1) as f64;
            (1.0 - into_decay / (decay as f64 + 1.0)).max(0.0) as f32
        }
    }
}

/// Computes the learning rate of `optimizer` in `epoch` under `schedule`.
pub fn learning_rate(optimizer: &Optimizer, schedule: &Schedule, epoch: usize) -> f32 {
    optimizer.lr() * lr_factor(schedule, epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_schedule_keeps_rate() {
        assert_eq!(lr_factor(&Schedule::Constant, 0), 1.0);
        assert_eq!(lr_factor(&Schedule::Constant, 10_000), 1.0);
    }

    #[test]
    fn linear_decay_follows_pix2pix_shape() {
        let schedule = Schedule::LinearDecay { constant: 100, decay: 100 };
        assert_eq!(lr_factor(&schedule, 0), 1.0);
        assert_eq!(lr_factor(&schedule, 99), 1.0);
        assert!((lr_factor(&schedule, 100) - 100.0 / 101.0).abs() < 1e-7);
        assert!((lr_factor(&schedule, 150) - 50.0 / 101.0).abs() < 1e-7);
        assert!((lr_factor(&schedule, 199) - 1.0 / 101.0).abs() < 1e-7);
        assert_eq!(lr_factor(&schedule, 200), 0.0);
        assert_eq!(lr_factor(&schedule, 500), 0.0);
    }

    #[test]
    fn linear_decay_is_monotone() {
        let schedule = Schedule::LinearDecay { constant: 3, decay: 7 };
        let factors: Vec<f32> = (0..12).map(|e| lr_factor(&schedule, e)).collect();
        assert!(factors.windows(2).all(|w| w[1] <= w[0]), "{factors:?}");
    }

    #[test]
    fn learning_rate_scales_base_rate() {
        let adam = Optimizer::Adam { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8 };
        let schedule = Schedule::LinearDecay { constant: 1, decay: 1 };
        assert_eq!(learning_rate(&adam, &schedule, 0), 2e-4);
        assert!((learning_rate(&adam, &schedule, 1) - 1e-4).abs() < 1e-10);
    }
}
