//! CheXlocalize's own summary of a per-image metric (`eval.py`: `bootstrap_metric`,
//! `compute_cis`), reproduced exactly so that figures can be compared with published ones: numpy's
//! legacy generator seeded with 0 (`np.random.seed(0)`, MT19937), 1,000 replicates of
//! `np.random.choice(n, n, replace=True)` over the images (one draw shared by all tasks), the
//! NaN-skipping mean per task and replicate, then the sorted replicate means read at
//! `int(0.025·1000) − 1` and `int(0.975·1000) − 1` and their mean, each rounded to 3 decimals.
//! The paper's Tables 2–3 report these means.

use crate::numpy::nanmean;

/// MT19937 as numpy's legacy `RandomState` runs it.
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    /// `np.random.seed(seed)` for an integer seed (numpy's `mt19937_seed`, i.e. `init_genrand`).
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    next ^= 0x9908_b0df;
                }
                self.state[i] = next;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `randint(0, n)` of the legacy generator (n ≤ 2³²): masked rejection sampling.
    pub fn below(&mut self, n: u32) -> u32 {
        let max = n - 1;
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// CheXlocalize's confidence record for one task: (lower, mean, upper), rounded to 3 decimals.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub lower: f64,
    pub mean: f64,
    pub upper: f64,
}

/// `values[task][image]` (NaN = undefined), images in CheXlocalize's row order (sorted ids).
/// One summary per task (None when a task is never defined in any replicate).
pub fn summarize(values: &[Vec<f64>], replicates: usize, seed: u32) -> Vec<Option<Summary>> {
    let n = values.first().map_or(0, Vec::len);
    let mut rng = Mt19937::new(seed);
    let mut means: Vec<Vec<f64>> = vec![Vec::with_capacity(replicates); values.len()];
    let mut sample = vec![0usize; n];
    for _ in 0..replicates {
        for s in sample.iter_mut() {
            *s = rng.below(n as u32) as usize;
        }
        for (task, column) in values.iter().enumerate() {
            // pandas' skipna mean: NaN filled with 0, numpy's pairwise sum, over the count.
            let drawn: Vec<f64> = sample.iter().map(|&i| column[i]).collect();
            means[task].push(nanmean(&drawn));
        }
    }
    means
        .into_iter()
        .map(|mut m| {
            // pandas sorts NaN last and skips it in the mean.
            m.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
                (false, false) => a.total_cmp(b),
                (a, b) => a.cmp(&b),
            });
            if m.iter().all(|v| v.is_nan()) {
                return None;
            }
            let index = |q: f64| ((q * replicates as f64) as usize).saturating_sub(1);
            // numpy's round: half to even.
            let round3 = |v: f64| (v * 1000.0).round_ties_even() / 1000.0;
            let mean = nanmean(&m);
            Some(Summary { lower: round3(m[index(0.025)]), mean: round3(mean), upper: round3(m[index(0.975)]) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mersenne_twister_reference_values() {
        // numpy: np.random.seed(0); [np.random.randint(0, 2**32, dtype=np.uint64) ...] starts
        // 2357136044, 2546248239, 3071714933 (the reference MT19937 output for init_genrand(0)).
        let mut mt = Mt19937::new(0);
        assert_eq!([mt.next_u32(), mt.next_u32(), mt.next_u32()], [2_357_136_044, 2_546_248_239, 3_071_714_933]);
        // The reference implementation's first output for seed 5489.
        assert_eq!(Mt19937::new(5489).next_u32(), 3_499_211_612);
        // numpy: np.random.seed(0); np.random.choice(10, size=10, replace=True)
        let mut mt = Mt19937::new(0);
        let draws: Vec<u32> = (0..10).map(|_| mt.below(10)).collect();
        assert_eq!(draws, [5, 0, 3, 3, 7, 9, 3, 5, 2, 4]);
    }
}
