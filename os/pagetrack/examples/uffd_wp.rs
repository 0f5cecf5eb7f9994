//! Per-page cost of the two capture mechanisms the heap offers, on the same machine and run:
//! SIGSEGV + `mprotect` ([`txipc_pagetrack::bench_first_write`]) and asynchronous userfaultfd
//! write-protect with `PAGEMAP_SCAN` and a shadow copy ([`txipc_pagetrack::bench_uffd_async`]).
//!
//! `cargo run --release -p txipc-pagetrack --example uffd_wp -- [pages] [runs]`

fn main() {
    let mut args = std::env::args().skip(1);
    let pages: usize = args.next().map_or(1024, |a| a.parse().expect("pages"));
    let runs: usize = args.next().map_or(9, |a| a.parse().expect("runs"));
    let s = txipc_pagetrack::bench_first_write(pages, runs).expect("sigsegv bench");
    println!(
        "sigsegv:    first_write={:.0} ns/page  begin={:.0} ns/page",
        s.first_write_ns, s.begin_ns
    );
    match txipc_pagetrack::bench_uffd_async(pages, runs) {
        Ok(u) => println!(
            "uffd-async: first_write={:.0} ns/page  scan+rewp={:.0} ns/page  shadow copy={:.0} ns/page  total={:.0} ns/page",
            u.first_write_ns,
            u.scan_ns,
            u.copy_ns,
            u.first_write_ns + u.scan_ns + u.copy_ns
        ),
        Err(e) => println!("uffd-async: not available here: {e}"),
    }
}
