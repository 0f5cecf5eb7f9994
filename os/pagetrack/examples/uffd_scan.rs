//! Cost of one [`txipc_pagetrack::uffd::WpAsync::scan`] against the size of the tracked region,
//! with `k` pages written between scans ([`txipc_pagetrack::bench_uffd_scan`]).
//!
//! `cargo run --release -p txipc-pagetrack --example uffd_scan -- [MiB] [k] [runs]`

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(64, |a| a.parse().expect("MiB"));
    let k: usize = args.next().map_or(8, |a| a.parse().expect("k"));
    let runs: usize = args.next().map_or(200, |a| a.parse().expect("runs"));
    let pages = (mib << 20) / rustix::param::page_size();
    let r = txipc_pagetrack::bench_uffd_scan(pages, k, runs).expect("uffd scan bench");
    println!(
        "{mib} MiB ({pages} pages), {k} written per scan: scan median {:.1} µs, min {:.1} µs",
        r.scan_ns / 1e3,
        r.scan_min_ns / 1e3
    );
}
