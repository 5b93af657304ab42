//! Timing helpers shared by the benchmarks (`mod common;`).

use std::time::{Duration, Instant};

/// The median time of `runs` runs of `run`, after one untimed run that warms
/// the page cache and the code.
pub fn median(runs: usize, mut run: impl FnMut()) -> Duration {
    run();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}
