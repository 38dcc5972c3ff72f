//! Time the hash chain over an existing store: chain every commit not chained yet (the first
//! run over a store made before the chain existed hashes everything), then verify it.
//!   cargo run --release -p hindsight-history --example chain -- STORE

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = std::env::args().nth(1).ok_or("usage: chain STORE")?;
    let t = std::time::Instant::now();
    hindsight_history::chain::extend_all(&store)?;
    let extend = t.elapsed();
    let t = std::time::Instant::now();
    let r = hindsight_history::chain::verify(&store, None)?;
    let verify = t.elapsed();
    println!(
        "extend {:.2} s, verify {:.2} s: {} commit(s), {} data file(s), {} problem(s)",
        extend.as_secs_f64(),
        verify.as_secs_f64(),
        r.commits,
        r.files,
        r.problems.len()
    );
    Ok(())
}
