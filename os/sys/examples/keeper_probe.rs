//! Kill → pidfd readable for a process with an N MiB touched memfd mapping, without and with a
//! [`txipc_sys::keeper`]: what the keeper takes off a SIGKILLed server's recovery path.
//!
//! `cargo run --release -p txipc-sys --example keeper_probe -- [MiB] [runs]`

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use txipc_sys::process::{self, Forked};

fn one(mib: usize, keeper: bool) -> Duration {
    let (rx, tx) = rustix::pipe::pipe().expect("pipe");
    let (mut rx, mut tx) = (std::fs::File::from(rx), std::fs::File::from(tx));
    match process::fork().expect("fork") {
        Forked::Child => {
            let fd = rustix::fs::memfd_create("probe-heap", rustix::fs::MemfdFlags::empty())
                .expect("memfd");
            rustix::fs::ftruncate(&fd, (mib << 20) as u64).expect("ftruncate");
            let file = std::fs::File::from(fd);
            // Touch every page through the file (no unsafe mapping code in an example): the
            // pages are then in the page cache; map them shared and read each one so that the
            // process's page tables cover the whole heap, as a server's do.
            let page = vec![1u8; 4096];
            let mut f = &file;
            for _ in 0..(mib << 8) {
                f.write_all(&page).expect("write");
            }
            let map = memmap(&file, mib << 20);
            let mut sum = 0u64;
            for off in (0..(mib << 20)).step_by(4096) {
                sum = sum.wrapping_add(u64::from(map[off]));
            }
            std::hint::black_box(sum);
            if keeper {
                txipc_sys::keeper::spawn().expect("keeper");
            }
            tx.write_all(b"x").unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Forked::Parent { child } => {
            let mut b = [0u8; 1];
            rx.read_exact(&mut b).unwrap();
            drop(tx);
            let pidfd = process::pidfd_open(child).expect("pidfd");
            std::thread::sleep(Duration::from_millis(20));
            let t = Instant::now();
            process::kill(child, rustix::process::Signal::KILL).unwrap();
            let mut fds = [rustix::event::PollFd::new(
                &pidfd,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut fds, None).expect("poll");
            let d = t.elapsed();
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
            // The keeper (reparented to init or a subreaper) dies by its parent-death signal.
            std::thread::sleep(Duration::from_millis(50));
            d
        }
    }
}

/// A read-only shared mapping, through the safe `std` file API plus `rustix`'s mmap.
fn memmap(file: &std::fs::File, len: usize) -> &'static [u8] {
    // SAFETY: a fresh read-only shared mapping of `len` bytes of a file this process keeps open
    // and never truncates; leaked for the life of the (short-lived) child.
    unsafe {
        let p = rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            file,
            0,
        )
        .expect("mmap");
        std::slice::from_raw_parts(p.cast::<u8>(), len)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut plain = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..runs {
        plain.push(one(mib, false));
        kept.push(one(mib, true));
    }
    plain.sort();
    kept.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "heap {mib} MiB, {runs} runs each, interleaved: kill -> pidfd median {:.0} us (max {:.0}) without a keeper, {:.0} us (max {:.0}) with one",
        us(plain[runs / 2]),
        us(plain[runs - 1]),
        us(kept[runs / 2]),
        us(kept[runs - 1])
    );
}
