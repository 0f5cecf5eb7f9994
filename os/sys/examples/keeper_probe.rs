//! Kill → pidfd readable for a process with an N MiB touched memfd mapping, without and with a
//! [`txipc_sys::keeper`]: what the keeper takes off a SIGKILLed server's recovery path.
//!
//! `[PROBE_SPIN=1] cargo run --release -p txipc-sys --example keeper_probe -- [MiB] [runs]`
//! (`PROBE_SPIN=1`: the process is killed while it runs, reading its heap, as a busy server
//! is; otherwise while it sleeps.) Three cases, interleaved: no keeper, a keeper that dies with
//! its creator (`Until::CreatorDies`), a keeper the parent kills 20 ms later
//! (`Until::Killed`, what the txipc kernel does).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use txipc_sys::process::{self, Forked};

#[derive(Clone, Copy)]
enum Keep {
    No,
    CreatorDies,
    Killed,
}

fn one(mib: usize, keeper: Keep) -> Duration {
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
            let write = std::env::var_os("PROBE_WRITE").is_some();
            for off in (0..(mib << 20)).step_by(4096) {
                if write {
                    map[off] = map[off].wrapping_add(1);
                }
                sum = sum.wrapping_add(u64::from(map[off]));
            }
            std::hint::black_box(sum);
            // The keeper's pid, sent to the parent when it must kill the keeper itself.
            let mut kp = 0i32;
            match keeper {
                Keep::No => {}
                Keep::CreatorDies => {
                    txipc_sys::keeper::spawn(txipc_sys::keeper::Until::CreatorDies)
                        .expect("keeper");
                }
                Keep::Killed => {
                    // The parent stands for the txipc kernel: the keeper lives until it dies
                    // or kills it.
                    let parent = process::pidfd_open(process::getppid()).expect("pidfd");
                    kp = txipc_sys::keeper::spawn(txipc_sys::keeper::Until::Killed(
                        std::os::fd::AsFd::as_fd(&parent),
                    ))
                    .expect("keeper")
                    .pid;
                }
            }
            tx.write_all(&kp.to_le_bytes()).unwrap();
            if std::env::var_os("PROBE_SPIN").is_some() {
                // Killed while running, as a busy server is.
                let mut off = 0usize;
                loop {
                    sum = sum.wrapping_add(u64::from(map[off]));
                    off = (off + 4096) % (mib << 20);
                    std::hint::black_box(sum);
                }
            }
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Forked::Parent { child } => {
            let mut b = [0u8; 4];
            rx.read_exact(&mut b).unwrap();
            let kp = i32::from_le_bytes(b);
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
            if kp > 0 {
                // Later, off the measured path, as the kernel does once a successor serves.
                std::thread::sleep(Duration::from_millis(20));
                let _ = process::kill(kp, rustix::process::Signal::KILL);
            }
            // The keeper (reparented to init or a subreaper) dies by its parent-death signal.
            std::thread::sleep(Duration::from_millis(50));
            d
        }
    }
}

/// A shared mapping (writable, as a server's heap is), through `rustix`'s mmap.
fn memmap(file: &std::fs::File, len: usize) -> &'static mut [u8] {
    // SAFETY: a fresh shared mapping of `len` bytes of a file this process keeps open and
    // never truncates, referenced only through the one slice returned; leaked for the life of
    // the (short-lived) child.
    unsafe {
        let p = rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            file,
            0,
        )
        .expect("mmap");
        std::slice::from_raw_parts_mut(p.cast::<u8>(), len)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut plain = Vec::new();
    let mut kept = Vec::new();
    let mut killed = Vec::new();
    for _ in 0..runs {
        plain.push(one(mib, Keep::No));
        kept.push(one(mib, Keep::CreatorDies));
        killed.push(one(mib, Keep::Killed));
    }
    for v in [&mut plain, &mut kept, &mut killed] {
        v.sort();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "heap {mib} MiB, {runs} runs each, interleaved, {}: kill -> pidfd median {:.0} us (max {:.0}) without a keeper; {:.0} us (max {:.0}) with a keeper that dies with it; {:.0} us (max {:.0}) with a keeper killed later",
        if std::env::var_os("PROBE_SPIN").is_some() {
            "killed while running"
        } else {
            "killed while asleep"
        },
        us(plain[runs / 2]),
        us(plain[runs - 1]),
        us(kept[runs / 2]),
        us(kept[runs - 1]),
        us(killed[runs / 2]),
        us(killed[runs - 1]),
    );
}
