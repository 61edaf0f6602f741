//! The 8-bit codes of the vectors: per dimension, 255 steps over the range the matrix's values take.
//! A vector's code in dimension `i` is `round((x_i - min_i) / step_i)`, one byte, so a walk step reads
//! a quarter of the f32 row's bytes; `q . x ~ q . min + sum_i (q_i step_i) code_i`.
//!
//! The code book is finite by construction: it is fitted only to finite values (a matrix with any
//! other is refused), and each step is computed in f64, so that even the widest finite range,
//! `f32::MAX - f32::MIN`, gives a finite f32 step.

use crate::error::{Error, Result};
use crate::store::npy::NpyMatrix;

/// Rows read from the matrix at a time.
const STEP: usize = 16_384;

#[derive(Debug, Clone, PartialEq)]
pub struct CodeBook {
    pub mins: Vec<f32>,
    pub steps: Vec<f32>,
}

impl CodeBook {
    /// The code book of a matrix: one pass over its rows for each dimension's range. A value that
    /// is not finite is an error naming the row.
    pub fn fit(matrix: &NpyMatrix) -> Result<CodeBook> {
        let (n, dim) = (matrix.rows(), matrix.cols());
        let mut mins = vec![f32::INFINITY; dim];
        let mut maxs = vec![f32::NEG_INFINITY; dim];
        matrix.advise_sequential();
        for a in (0..n).step_by(STEP) {
            let b = (a + STEP).min(n);
            widen(&matrix.rows_f32(a, b), &mut mins, &mut maxs).map_err(|(r, i, x)| {
                Error::invalid(
                    matrix.path(),
                    None,
                    format!(
                        "row {} holds the non-finite value {x} in dimension {i}: the matrix is \
                         damaged; run `simlm-index verify` on its index",
                        a + r
                    ),
                )
            })?;
            matrix.release_rows(a, b);
        }
        Ok(Self::from_ranges(mins, maxs, n))
    }

    /// The code book of rows in memory (`dim` values each); a value that is not finite is an error
    /// naming its row.
    pub fn fit_rows(rows: &[f32], dim: usize) -> std::result::Result<CodeBook, String> {
        let mut mins = vec![f32::INFINITY; dim];
        let mut maxs = vec![f32::NEG_INFINITY; dim];
        widen(rows, &mut mins, &mut maxs).map_err(|(r, i, x)| {
            format!("row {r} holds the non-finite value {x} in dimension {i}")
        })?;
        Ok(Self::from_ranges(mins, maxs, rows.len() / dim.max(1)))
    }

    /// From each dimension's finite range (none for no rows).
    fn from_ranges(mut mins: Vec<f32>, mut maxs: Vec<f32>, n: usize) -> CodeBook {
        if n == 0 {
            mins.fill(0.0);
            maxs.fill(0.0);
        }
        let steps = mins
            .iter()
            .zip(&maxs)
            .map(|(&lo, &hi)| ((hi as f64 - lo as f64) / 255.0) as f32)
            .collect();
        CodeBook { mins, steps }
    }

    /// The codes of every row of the matrix, row-major.
    pub fn encode(&self, matrix: &NpyMatrix) -> Vec<u8> {
        let n = matrix.rows();
        // Read at random through the whole build: huge pages (see `memory`).
        let mut codes = crate::memory::huge_with_capacity(n * matrix.cols());
        matrix.advise_sequential();
        for a in (0..n).step_by(STEP) {
            let b = (a + STEP).min(n);
            self.encode_into(&matrix.rows_f32(a, b), &mut codes);
            // One pass: a matrix larger than memory must not stay resident beside the codes.
            matrix.release_rows(a, b);
        }
        codes
    }

    /// Appends the codes of rows in memory to `codes`.
    pub fn encode_into(&self, rows: &[f32], codes: &mut Vec<u8>) {
        let dim = self.mins.len();
        for row in rows.chunks_exact(dim.max(1)) {
            codes.extend(row.iter().enumerate().map(|(i, &x)| {
                if self.steps[i] > 0.0 {
                    ((x - self.mins[i]) / self.steps[i])
                        .round()
                        .clamp(0.0, 255.0) as u8
                } else {
                    0
                }
            }));
        }
    }
}

/// Widens each dimension's range to the rows' values; a value that is not finite stops it, with its
/// row, dimension and value.
fn widen(
    rows: &[f32],
    mins: &mut [f32],
    maxs: &mut [f32],
) -> std::result::Result<(), (usize, usize, f32)> {
    for (r, row) in rows.chunks_exact(mins.len().max(1)).enumerate() {
        for (i, &x) in row.iter().enumerate() {
            if !x.is_finite() {
                return Err((r, i, x));
            }
            mins[i] = mins[i].min(x);
            maxs[i] = maxs[i].max(x);
        }
    }
    Ok(())
}
