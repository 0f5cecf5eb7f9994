//! Prints `txipc_heap::bench::bench_tx` as JSON (`cargo run --release -p txipc-heap --example bench_tx`).

fn main() -> Result<(), txipc_heap::HeapError> {
    let r = txipc_heap::bench::bench_tx(&txipc_heap::bench::TxBenchOptions::default())?;
    println!("{}", serde_json::to_string(&r).expect("serialisable"));
    Ok(())
}
