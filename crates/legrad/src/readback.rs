//! Reading tensors back from the device: asynchronous, since WebGPU has no blocking read
//! (native callers block on it with `pollster`).

use burn::tensor::{Tensor, TensorData};

use crate::error::{LegradError, Result};

/// Read a tensor back as f32 values.
pub async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    let data: TensorData = t.into_data_async().await.map_err(backend_error)?;
    data.convert::<f32>().try_into_vec::<f32>().map_err(backend_error)
}

/// A backend's error (a lost GPU reads "The device is poisoned; Destroyed: Device was
/// destroyed.").
fn backend_error(e: impl std::fmt::Debug) -> LegradError {
    LegradError::Backend(crate::error::one_line(format!("{e:?}")))
}
