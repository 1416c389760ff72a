//! .npy input and output through `npyz`.

use std::path::Path;

use npyz::WriterBuilder;

use legrad::{InputSize, LegradError};

fn io(path: &Path, e: std::io::Error) -> LegradError {
    LegradError::io_path(path, e)
}

pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<(), LegradError> {
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>())
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(|e| io(path, e))?;
    writer.extend(data.iter().copied()).map_err(|e| io(path, e))?;
    writer.finish().map_err(|e| io(path, e))
}

/// An f32 array `[3, H, W]` or `[1, 3, H, W]`, C order.
pub fn read_pixels(path: &Path) -> Result<(Vec<f32>, InputSize), LegradError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| LegradError::Input(format!("{} is not a .npy file: {e}", path.display())))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() != npyz::Order::C {
        return Err(LegradError::Input(format!("{}: Fortran-order arrays are not supported", path.display())));
    }
    let (h, w) = match shape[..] {
        [3, h, w] | [1, 3, h, w] => (h, w),
        _ => {
            return Err(LegradError::Input(format!(
                "{}: expected shape [3, H, W] or [1, 3, H, W], got {shape:?}",
                path.display()
            )));
        }
    };
    let data: Vec<f32> = npy
        .into_vec::<f32>()
        .map_err(|e| LegradError::Input(format!("{}: expected float32 values: {e}", path.display())))?;
    if data.iter().any(|v| !v.is_finite()) {
        return Err(LegradError::Input(format!("{}: the array holds NaN or infinite values", path.display())));
    }
    Ok((data, InputSize { width: w, height: h }))
}
