//! Resampling of f32 grids: positional embeddings for other grids (LEGRAD.md section 2), and
//! maps to image sizes (bilinear, as `F.interpolate`). No tensors: the page uses it too.
//!
//! timm's `resample_abs_pos_embed` calls `F.interpolate(mode='bicubic', antialias=True,
//! align_corners=False)`: PyTorch's antialiased bicubic, which is PIL's filter (a = -0.5,
//! support widened by the scale when downsampling, weights renormalised at the borders).
//! `fast_image_resize` implements PIL's filter for 8-bit images; no crate resamples an f32
//! `[H, W, C]` array this way, so the 1-D kernel is written out here (PyTorch's
//! `compute_indices_weights_aa`, aten/src/ATen/native/cpu/UpSampleKernel.cpp).

/// PIL / PyTorch-aa bicubic kernel, a = -0.5.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: the first input index and the normalised weights.
fn weights_aa(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax).map(|j| bicubic((j as f64 - center + 0.5) * invscale)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// Resample a row-major `[in_h, in_w, channels]` grid to `[out_h, out_w, channels]`.
pub fn resample_bicubic_aa(
    data: &[f32],
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    channels: usize,
) -> Vec<f32> {
    assert_eq!(data.len(), in_h * in_w * channels);
    // Width first, then height, in f64.
    let wx = weights_aa(in_w, out_w);
    let mut tmp = vec![0f64; in_h * out_w * channels];
    for y in 0..in_h {
        for (x, (x0, w)) in wx.iter().enumerate() {
            let dst = &mut tmp[(y * out_w + x) * channels..][..channels];
            for (k, wk) in w.iter().enumerate() {
                let src = &data[(y * in_w + x0 + k) * channels..][..channels];
                for c in 0..channels {
                    dst[c] += wk * src[c] as f64;
                }
            }
        }
    }
    let wy = weights_aa(in_h, out_h);
    let mut out = vec![0f32; out_h * out_w * channels];
    for (y, (y0, w)) in wy.iter().enumerate() {
        for x in 0..out_w {
            let dst = &mut out[(y * out_w + x) * channels..][..channels];
            for c in 0..channels {
                let mut acc = 0f64;
                for (k, wk) in w.iter().enumerate() {
                    acc += wk * tmp[((y0 + k) * out_w + x) * channels + c];
                }
                dst[c] = acc as f32;
            }
        }
    }
    out
}

/// Bilinear upsampling by an integer factor with `align_corners=False` (torch's
/// `F.interpolate(scale_factor=p, mode='bilinear')`), for `[maps, h, w]` stacked row-major.
pub fn upsample_bilinear(data: &[f32], maps: usize, (h, w): (usize, usize), factor: usize) -> Vec<f32> {
    // torch: src = (dst + 0.5) / scale - 0.5.
    let src = |o: usize| (o as f32 + 0.5) / factor as f32 - 0.5;
    bilinear(data, maps, (h, w), (h * factor, w * factor), src, src)
}

/// Bilinear resizing to any size with `align_corners=False` and no antialiasing (torch's
/// `F.interpolate(size=(oh, ow), mode='bilinear')`), for `[maps, h, w]` stacked row-major.
pub fn resize_bilinear(data: &[f32], maps: usize, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    let (sy, sx) = (h as f32 / oh.max(1) as f32, w as f32 / ow.max(1) as f32);
    bilinear(data, maps, (h, w), (oh, ow), |o| (o as f32 + 0.5) * sy - 0.5, |o| (o as f32 + 0.5) * sx - 0.5)
}

fn bilinear(
    data: &[f32],
    maps: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    src_y: impl Fn(usize) -> f32,
    src_x: impl Fn(usize) -> f32,
) -> Vec<f32> {
    let coord = |src: f32, n: usize| -> (usize, usize, f32) {
        let src = src.max(0.0); // clamped below at 0, as torch
        let i0 = (src.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, src - i0 as f32)
    };
    let xs: Vec<_> = (0..ow).map(|x| coord(src_x(x), w)).collect();
    let ys: Vec<_> = (0..oh).map(|y| coord(src_y(y), h)).collect();
    let mut out = vec![0f32; maps * oh * ow];
    for m in 0..maps {
        let src = &data[m * h * w..][..h * w];
        let dst = &mut out[m * oh * ow..][..oh * ow];
        for (y, &(y0, y1, ly)) in ys.iter().enumerate() {
            for (x, &(x0, x1, lx)) in xs.iter().enumerate() {
                let top = src[y0 * w + x0] * (1.0 - lx) + src[y0 * w + x1] * lx;
                let bottom = src[y1 * w + x0] * (1.0 - lx) + src[y1 * w + x1] * lx;
                dst[y * ow + x] = top * (1.0 - ly) + bottom * ly;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        let data: Vec<f32> = (0..4 * 4 * 3).map(|v| v as f32).collect();
        let out = resample_bicubic_aa(&data, (4, 4), (4, 4), 3);
        for (a, b) in data.iter().zip(&out) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn weights_sum_to_one() {
        for (i, o) in [(14, 28), (14, 7), (4, 6), (7, 3)] {
            for (_, w) in weights_aa(i, o) {
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn bilinear_matches_torch_example() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), scale_factor=2,
        // mode='bilinear') == [[0, .25, .75, 1], [.5, .75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]]
        let out = upsample_bilinear(&[0., 1., 2., 3.], 1, (2, 2), 2);
        let want = [0., 0.25, 0.75, 1., 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2., 2.25, 2.75, 3.];
        assert_eq!(out, want);
    }
}
