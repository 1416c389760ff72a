//! The MLP's activations on burn's tensors, and their derivatives for LeGrad's analytic
//! backward (the integer path's host forms are `int_linear::activate_in_place`).

use burn::tensor::{Tensor, activation};

use crate::config::Activation;

/// `act(x)` and, for the analytic backward, `act'(x)`.
pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::Gelu => activation::gelu(x),
        Activation::QuickGelu => x.clone() * activation::sigmoid(x.mul_scalar(1.702)),
    }
}

pub fn activate_grad<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        // d/dx x Φ(x) = Φ(x) + x φ(x)
        Activation::Gelu => {
            let cdf = x.clone().div_scalar(std::f64::consts::SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5);
            let pdf =
                x.clone().powi_scalar(2).mul_scalar(-0.5).exp().mul_scalar(1.0 / (2.0 * std::f64::consts::PI).sqrt());
            cdf + x * pdf
        }
        // d/dx x σ(ax) = σ(ax) + a x σ(ax)(1 - σ(ax))
        Activation::QuickGelu => {
            let s = activation::sigmoid(x.clone().mul_scalar(1.702));
            s.clone() + x.mul_scalar(1.702) * s.clone() * s.neg().add_scalar(1.0)
        }
    }
}
