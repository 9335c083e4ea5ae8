//! Vose's alias method: weighted sampling in O(1) from one 64-bit random number.
//!
//! Built in O(n) from the weights: column `i` keeps itself with probability
//! `threshold / 2^32` and otherwise gives its alias. A draw takes a column from the high
//! bits of a 64-bit number and the coin from its low 32 bits, so the random algorithms need
//! one generator call and the hash algorithms one hash per draw. The table holds 8 bytes a
//! backend, in one allocation.

/// One column of the table.
#[derive(Debug, Clone, Copy)]
struct Column {
    /// Keep this column when the low 32 bits of the draw are below this.
    threshold: u32,
    /// The backend drawn otherwise (the column itself when it is never given away).
    alias: u32,
}

/// An alias table over backend weights.
#[derive(Debug)]
pub(crate) struct AliasTable {
    columns: Box<[Column]>,
}

impl AliasTable {
    /// A table drawing index `i` with probability `weights[i] / sum(weights)`
    /// (to within 2^-32 per column). A weight of 0 counts as 1.
    pub(crate) fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        let total: u128 = weights.iter().map(|&w| u128::from(w.max(1))).sum();
        // Scaled so that the average column holds exactly `total`.
        let mut scaled: Vec<u128> = weights
            .iter()
            .map(|&w| u128::from(w.max(1)) * n as u128)
            .collect();
        let mut columns: Vec<Column> = (0..n)
            .map(|i| Column {
                threshold: u32::MAX,
                alias: i as u32,
            })
            .collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            columns[s] = Column {
                threshold: ((scaled[s] << 32) / total) as u32,
                alias: l as u32,
            };
            scaled[l] -= total - scaled[s];
            if scaled[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // What is left is full (or off only by rounding): it keeps itself.
        Self {
            columns: columns.into_boxed_slice(),
        }
    }

    /// How many backends the table draws from.
    pub(crate) fn len(&self) -> usize {
        self.columns.len()
    }

    /// The index that 64 random (or hashed) bits draw. The table must not be empty.
    #[inline]
    pub(crate) fn draw(&self, bits: u64) -> usize {
        let i = crate::rng::scale(bits, self.columns.len());
        let column = self.columns[i];
        if (bits as u32) < column.threshold || column.alias as usize == i {
            i
        } else {
            column.alias as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact probability of each index, from the table itself.
    fn exact(t: &AliasTable) -> Vec<f64> {
        let n = t.columns.len();
        let mut p = vec![0.0; n];
        for (i, c) in t.columns.iter().enumerate() {
            let keep = if c.alias as usize == i {
                1.0
            } else {
                f64::from(c.threshold) / 2f64.powi(32)
            };
            p[i] += keep / n as f64;
            p[c.alias as usize] += (1.0 - keep) / n as f64;
        }
        p
    }

    proptest! {
        #[test]
        fn probabilities_match_weights(weights in prop::collection::vec(0u32..1000, 1..40)) {
            let t = AliasTable::new(&weights);
            let total: f64 = weights.iter().map(|&w| f64::from(w.max(1))).sum();
            for (i, p) in exact(&t).into_iter().enumerate() {
                let want = f64::from(weights[i].max(1)) / total;
                prop_assert!((p - want).abs() < 1e-6, "index {} p {} want {}", i, p, want);
            }
        }
    }

    #[test]
    fn single_and_equal() {
        let t = AliasTable::new(&[7]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.draw(u64::MAX), 0);
        let t = AliasTable::new(&[1, 1, 1, 1]);
        assert_eq!(t.draw(0), 0);
        assert_eq!(t.draw(u64::MAX), 3);
    }
}
