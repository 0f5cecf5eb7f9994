//! Prints the cost of a first write to a protected page (SIGSEGV backend).
//!
//! `cargo run --release -p txipc-pagetrack --example first_write [pages] [runs]`

fn main() {
    let mut args = std::env::args().skip(1);
    let pages: usize = args.next().map_or(1024, |a| a.parse().expect("pages"));
    let runs: usize = args.next().map_or(9, |a| a.parse().expect("runs"));
    let r = txipc_pagetrack::bench_first_write(pages, runs).expect("bench");
    println!(
        "sigsegv: pages={} runs={} first_write={:.0} ns (min {:.0}) begin={:.0} ns/page plain_write={:.1} ns",
        r.pages, r.runs, r.first_write_ns, r.first_write_min_ns, r.begin_ns, r.plain_write_ns
    );
}
