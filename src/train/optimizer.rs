//! Optimizer math on the host: the state each step keeps, the values each update reads,
//! and plain reference updates that the fused WGSL kernels are tested against.
//!
//! Adam follows Kingma and Ba's algorithm with bias correction; SGD with momentum keeps
//! one velocity per element and adds the gradient to it, as PyTorch's `SGD` does with
//! `dampening = 0`. Each training step has its own state, so the discriminator's and the
//! generator's moments never mix.

use crate::ir::Optimizer;

/// Names of the per-parameter state tensors of `optimizer`, in the order the kernels bind
/// them. Checkpoints store them as `<parameter>.<state>` (PyTorch's names).
pub fn state_names(optimizer: &Optimizer) -> &'static [&'static str] {
    match optimizer {
        Optimizer::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        Optimizer::Sgd { .. } => &["momentum_buffer"],
    }
}

/// The values one update reads besides the tensors: the learning rate and, for Adam,
/// `beta1^t` and `beta2^t` of the step's `t`-th update (1-based).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateValues {
    pub lr: f32,
    pub beta1_power: f32,
    pub beta2_power: f32,
}

impl UpdateValues {
    /// Computes the values of update number `t` (1-based) at learning rate `lr`.
    pub fn new(optimizer: &Optimizer, lr: f32, t: u64) -> Self {
        match *optimizer {
            Optimizer::Adam { beta1, beta2, .. } => {
                // powi takes an i32; beyond that many updates both powers are 0 in f32.
                let exponent = t.min(i32::MAX as u64) as i32;
                UpdateValues {
                    lr,
                    beta1_power: (beta1 as f64).powi(exponent) as f32,
                    beta2_power: (beta2 as f64).powi(exponent) as f32,
                }
            }
            Optimizer::Sgd { .. } => UpdateValues { lr, beta1_power: 0.0, beta2_power: 0.0 },
        }
    }
}

/// Applies one Adam update to `param`, `exp_avg` and `exp_avg_sq` in place.
pub fn adam_reference(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    optimizer: &Optimizer,
    values: UpdateValues,
) {
    let Optimizer::Adam { beta1, beta2, eps, .. } = *optimizer else {
        panic!("adam_reference needs an Adam optimizer, got {optimizer:?}");
    };
    let correction1 = 1.0 - values.beta1_power as f64;
    let correction2 = 1.0 - values.beta2_power as f64;
    for i in 0..param.len() {
        let g = grad[i] as f64;
        let m = beta1 as f64 * exp_avg[i] as f64 + (1.0 - beta1 as f64) * g;
        let v = beta2 as f64 * exp_avg_sq[i] as f64 + (1.0 - beta2 as f64) * g * g;
        let step = values.lr as f64 * (m / correction1) / ((v / correction2).sqrt() + eps as f64);
        exp_avg[i] = m as f32;
        exp_avg_sq[i] = v as f32;
        param[i] = (param[i] as f64 - step) as f32;
    }
}

/// Applies one SGD-with-momentum update to `param` in place.
pub fn sgd_reference(
    param: &mut [f32],
    grad: &[f32],
    momentum_buffer: &mut [f32],
    optimizer: &Optimizer,
    values: UpdateValues,
) {
    let Optimizer::Sgd { momentum, .. } = *optimizer else {
        panic!("sgd_reference needs an SGD optimizer, got {optimizer:?}");
    };
    for i in 0..param.len() {
        let velocity = momentum as f64 * momentum_buffer[i] as f64 + grad[i] as f64;
        momentum_buffer[i] = velocity as f32;
        param[i] = (param[i] as f64 - values.lr as f64 * velocity) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADAM: Optimizer = Optimizer::Adam { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8 };

    #[test]
    fn adam_first_step_moves_by_lr() {
        // With bias correction the first update is lr * g / (|g| + eps): lr times the sign.
        let mut param = [1.0f32, -2.0, 0.5];
        let grad = [0.3f32, -4.0, 0.0];
        let (mut m, mut v) = ([0.0f32; 3], [0.0f32; 3]);
        adam_reference(&mut param, &grad, &mut m, &mut v, &ADAM, UpdateValues::new(&ADAM, 2e-4, 1));
        assert!((param[0] - (1.0 - 2e-4)).abs() < 1e-7, "{}", param[0]);
        assert!((param[1] - (-2.0 + 2e-4)).abs() < 1e-7, "{}", param[1]);
        assert_eq!(param[2], 0.5);
        assert!((m[0] - 0.15).abs() < 1e-7);
        assert!((v[1] - 0.016).abs() < 1e-6, "{}", v[1]);
    }

    #[test]
    fn adam_bias_powers_follow_update_count() {
        let values = UpdateValues::new(&ADAM, 1e-3, 3);
        assert_eq!(values.lr, 1e-3);
        assert!((values.beta1_power - 0.125).abs() < 1e-9);
        assert!((values.beta2_power - 0.999f64.powi(3) as f32).abs() < 1e-9);
    }

    #[test]
    fn sgd_momentum_accumulates_velocity() {
        let sgd = Optimizer::Sgd { lr: 0.1, momentum: 0.9 };
        let mut param = [1.0f32];
        let mut velocity = [0.0f32];
        let values = UpdateValues::new(&sgd, 0.1, 1);
        sgd_reference(&mut param, &[2.0], &mut velocity, &sgd, values);
        assert!((param[0] - 0.8).abs() < 1e-7);
        sgd_reference(&mut param, &[2.0], &mut velocity, &sgd, values);
        assert!((velocity[0] - 3.8).abs() < 1e-6);
        assert!((param[0] - 0.42).abs() < 1e-6);
    }

    #[test]
    fn state_names_match_pytorch() {
        assert_eq!(state_names(&ADAM), ["exp_avg", "exp_avg_sq"]);
        assert_eq!(state_names(&Optimizer::Sgd { lr: 0.1, momentum: 0.9 }), ["momentum_buffer"]);
    }
}
