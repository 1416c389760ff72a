//! `.npy` arrays through `npyz`: the CLI's `--pixels` input (a user's bytes, so parsed here,
//! in the core, where the fuzz tests reach it) and its outputs.

use std::path::Path;

use npyz::WriterBuilder;

use crate::error::{LegradError, Result, one_line};
use crate::preprocess::InputSize;

/// Write `data` (C order) as a float32 array of `shape`.
pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let io = |e| LegradError::io_path(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>())
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    writer.extend(data.iter().copied()).map_err(io)?;
    writer.finish().map_err(io)
}

/// Preprocessed pixels from a file: an f32 array `[3, H, W]` or `[1, 3, H, W]`, C order.
pub fn read_pixels_file(path: &Path) -> Result<(Vec<f32>, InputSize)> {
    let bytes = std::fs::read(path).map_err(|e| LegradError::io_path(path, e))?;
    read_pixels(&bytes).map_err(|e| match e {
        LegradError::Input(m) => LegradError::Input(format!("{}: {m}", path.display())),
        e => e,
    })
}

/// Preprocessed pixels from `.npy` bytes (see [`read_pixels_file`]); every other array is
/// refused in words. The side lengths are checked before the values are read, so a header
/// claiming a huge array allocates nothing.
pub fn read_pixels(bytes: &[u8]) -> Result<(Vec<f32>, InputSize)> {
    // npyz explains a bad header over several lines (a caret under the column).
    let first = |e: std::io::Error| one_line(e);
    let npy = npyz::NpyFile::new(bytes).map_err(|e| LegradError::Input(format!("not a .npy file: {}", first(e))))?;
    let shape = npy.shape().to_vec();
    if npy.order() != npyz::Order::C {
        return Err(LegradError::Input("Fortran-order arrays are not supported".into()));
    }
    let (h, w) = match shape[..] {
        [3, h, w] | [1, 3, h, w] => (h, w),
        _ => return Err(LegradError::Input(format!("expected shape [3, H, W] or [1, 3, H, W], got {shape:?}"))),
    };
    if h == 0 || w == 0 || h > 4096 || w > 4096 {
        return Err(LegradError::Input(format!("a {h}x{w} array is out of range (1 to 4096 pixels per side)")));
    }
    let (h, w) = (h as usize, w as usize);
    let data: Vec<f32> =
        npy.into_vec::<f32>().map_err(|e| LegradError::Input(format!("expected float32 values: {}", first(e))))?;
    if data.len() != 3 * h * w {
        return Err(LegradError::Input(format!("the file holds {} values, its shape says {}", data.len(), 3 * h * w)));
    }
    if data.iter().any(|v| !v.is_finite()) {
        return Err(LegradError::Input("the array holds NaN or infinite values".into()));
    }
    Ok((data, InputSize { width: w, height: h }))
}
