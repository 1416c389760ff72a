//! The one numeric comparison every test uses, natively and in the browser (the `test-support`
//! feature; not part of the library's API for users).
//!
//! A fold with `f32::max` returns the other operand when one is NaN, so a map full of NaN would
//! pass a `max_abs_diff <= 1e-4` check. [`compare`] refuses NaN and infinity on either side, a
//! length mismatch and empty inputs, and says where the worst difference is.

use std::fmt;

/// The largest absolute difference between two equally long, finite sequences, and where it is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Diff {
    pub max_abs: f32,
    /// Index of the (first) largest difference.
    pub at: usize,
    pub actual: f32,
    pub expected: f32,
    pub len: usize,
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max abs diff {:.3e} at index {} of {} ({} against {})",
            self.max_abs, self.at, self.len, self.actual, self.expected
        )
    }
}

/// Why two sequences cannot be compared: every one of these fails a test.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum NotComparable {
    #[error("{actual} values against {expected} expected")]
    Length { actual: usize, expected: usize },
    #[error("nothing to compare (both empty)")]
    Empty,
    #[error("not finite at index {index}: {actual} against {expected}")]
    NotFinite { index: usize, actual: f32, expected: f32 },
}

/// Compare `actual` with `expected`, element by element.
pub fn compare(actual: &[f32], expected: &[f32]) -> Result<Diff, NotComparable> {
    if actual.len() != expected.len() {
        return Err(NotComparable::Length { actual: actual.len(), expected: expected.len() });
    }
    if actual.is_empty() {
        return Err(NotComparable::Empty);
    }
    let mut worst = Diff { max_abs: 0.0, at: 0, actual: actual[0], expected: expected[0], len: actual.len() };
    for (index, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if !a.is_finite() || !e.is_finite() {
            return Err(NotComparable::NotFinite { index, actual: a, expected: e });
        }
        let d = (a - e).abs();
        if d > worst.max_abs {
            worst = Diff { max_abs: d, at: index, actual: a, expected: e, len: actual.len() };
        }
    }
    Ok(worst)
}

/// [`compare`]'s largest difference; panics (the test fails) where the two are not comparable.
#[track_caller]
pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> f32 {
    match compare(actual, expected) {
        Ok(d) => d.max_abs,
        Err(e) => panic!("not comparable: {e}"),
    }
}

/// Panics unless `actual` is within `tol` of `expected` everywhere, saying where it is not.
#[track_caller]
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) -> Diff {
    match compare(actual, expected) {
        Ok(d) if d.max_abs <= tol => d,
        Ok(d) => panic!("{what}: {d}, over the tolerance {tol:e}"),
        Err(e) => panic!("{what}: not comparable: {e}"),
    }
}

/// [`compare`] for the kernels' own checks, which answer with a sentence.
pub fn compare_or_explain(actual: &[f32], expected: &[f32]) -> Result<Diff, String> {
    compare(actual, expected).map_err(|e| e.to_string())
}

/// Seeded uniform values in `lo..hi` (a linear congruential generator): the kernels' checks'
/// random operands, the same natively and in the browser.
pub fn values(len: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            lo + (hi - lo) * ((s >> 8) as f32 / 16_777_216.0)
        })
        .collect()
}

/// The largest difference of `actual` from `expected` relative to `expected`'s largest
/// magnitude, or why they are not comparable (NaN, lengths).
pub fn relative_diff(actual: &[f32], expected: &[f32]) -> Result<f32, String> {
    let diff = compare_or_explain(actual, expected)?;
    // Finite, as compare checked.
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    Ok(diff.max_abs / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_worst_difference_and_where() {
        let d = compare(&[1.0, 2.0, 3.5], &[1.0, 2.25, 3.0]).unwrap();
        assert_eq!((d.max_abs, d.at, d.actual, d.expected, d.len), (0.5, 2, 3.5, 3.0, 3));
        assert_eq!(compare(&[0.5], &[0.5]).unwrap().max_abs, 0.0);
    }

    #[test]
    fn a_planted_nan_or_infinity_fails() {
        let good = vec![0.25f32; 64];
        let mut bad = good.clone();
        bad[17] = f32::NAN;
        // What the old fold did: NaN disappears and a 1e-4 check passes.
        let blind = bad.iter().zip(&good).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(blind <= 1e-4, "the NaN-blind fold this replaces");
        assert!(matches!(compare(&bad, &good), Err(NotComparable::NotFinite { index: 17, .. })));
        assert!(matches!(compare(&good, &bad), Err(NotComparable::NotFinite { index: 17, .. })));
        bad[17] = f32::INFINITY;
        assert!(matches!(compare(&bad, &good), Err(NotComparable::NotFinite { index: 17, .. })));
        let all_nan = vec![f32::NAN; 64];
        assert!(compare(&all_nan, &good).is_err());
    }

    #[test]
    #[should_panic(expected = "not comparable: not finite at index 3")]
    fn max_abs_diff_panics_on_nan() {
        max_abs_diff(&[0.0, 0.0, 0.0, f32::NAN], &[0.0; 4]);
    }

    #[test]
    #[should_panic(expected = "over the tolerance")]
    fn assert_close_says_where() {
        assert_close(&[0.0, 1.0], &[0.0, 0.0], 1e-4, "maps");
    }

    #[test]
    fn lengths_must_match_and_something_must_be_compared() {
        assert_eq!(compare(&[1.0], &[1.0, 2.0]), Err(NotComparable::Length { actual: 1, expected: 2 }));
        assert_eq!(compare(&[], &[]), Err(NotComparable::Empty));
    }
}
