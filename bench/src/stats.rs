//! The figures of a latency sample.

/// p50, p99, p99.9 and the maximum of `lat` (ns), in ms; zeros for an empty sample.
pub fn percentiles(mut lat: Vec<u64>) -> (f64, f64, f64, f64) {
    if lat.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    (
        q(0.50),
        q(0.99),
        q(0.999),
        *lat.last().unwrap_or(&0) as f64 / 1e6,
    )
}
