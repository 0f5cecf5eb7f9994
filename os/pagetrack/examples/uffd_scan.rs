//! Cost of one [`txipc_pagetrack::uffd::WpAsync::scan`] against the size of the tracked region,
//! with `k` pages written between scans (the region is a private mapping of a populated
//! memfd, as the heap uses it).
//!
//! `cargo run --release -p txipc-pagetrack --example uffd_scan -- [MiB] [k] [runs]`

use std::time::Instant;

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};
use txipc_pagetrack::uffd::WpAsync;

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(64, |a| a.parse().expect("MiB"));
    let k: usize = args.next().map_or(8, |a| a.parse().expect("k"));
    let runs: usize = args.next().map_or(200, |a| a.parse().expect("runs"));
    let ps = rustix::param::page_size();
    let len = mib << 20;
    let pages = len / ps;
    let fd = rustix::fs::memfd_create("uffd-scan", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len as u64).unwrap();
    // SAFETY: a fresh private mapping of our memfd, never unmapped before exit.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
            &fd,
            0,
        )
    }
    .unwrap()
    .cast::<u8>();
    for p in 0..pages {
        // SAFETY: inside the mapping; populates every page (copy-on-write, as a used heap).
        unsafe { ptr.add(p * ps).write_volatile(1) };
    }
    // SAFETY: the mapping lives until the process exits.
    let mut t = unsafe { WpAsync::new(ptr, len) }.expect("uffd");
    let mut out = Vec::new();
    let mut ns = Vec::with_capacity(runs);
    let mut x = 1usize;
    for r in 0..runs {
        for _ in 0..k {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // SAFETY: inside the mapping.
            unsafe { ptr.add((x >> 20) % pages * ps).write_volatile(r as u8) };
        }
        out.clear();
        let t0 = Instant::now();
        t.scan(&mut out).unwrap();
        ns.push(t0.elapsed().as_nanos() as f64);
        assert!(out.len() <= k);
    }
    ns.sort_by(f64::total_cmp);
    println!(
        "{mib} MiB ({pages} pages), {k} written per scan: scan median {:.1} µs, min {:.1} µs",
        ns[ns.len() / 2] / 1e3,
        ns[0] / 1e3
    );
}
