//! Hostile input: garbage written straight into channel memory, bad fds, lying servers.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rustix::fs::{MemfdFlags, SealFlags};
use txipc_chan::baseline::{EVENT_STOP, fork_child, run_echo_server};
use txipc_chan::{
    ChanError, ChannelLayout, ClientChannel, Doorbell, KernelChannel, ServerChannel, SpinConfig,
    SpinMode, Status, create_channel, create_doorbell,
};

#[test]
fn garbage_in_one_channel_is_answered_malformed_or_ignored_and_harms_no_other() {
    let layout = ChannelLayout {
        nslots: 4,
        req_cap: 128,
        reply_cap: 128,
    };
    let bad_fd = create_channel("victim-of-its-own-client", layout).unwrap();
    let good_fd = create_channel("honest", layout).unwrap();
    let bell = create_doorbell().unwrap();
    let chans = [
        ServerChannel::map(&bad_fd).unwrap(),
        ServerChannel::map(&good_fd).unwrap(),
    ];
    let sbell = Doorbell::map(&bell).unwrap();
    // SAFETY: fork_child items 1-3: the test thread forks while the harness's other threads run; the
    // child only uses channel/doorbell mappings made before the fork (atomics, raw copies, futexes)
    // and returns a code: it takes no lock, owns nothing with an outside effect, and prints only
    // in a panic, that is when the test fails anyway.
    let srv = unsafe {
        fork_child(|| {
            run_echo_server(&chans, &sbell, Duration::from_micros(5));
            0
        })
    }
    .unwrap();
    drop(chans);
    let raw = RawMap::new(&bad_fd, layout.total_size());
    // The hostile client rings through its own channel's bell line, as a client does.
    let ring = || {
        raw.u32(BELL).fetch_add(1, Ordering::SeqCst);
        txipc_chan::futex::wake_all(raw.u32(BELL));
    };

    // 1. A posted request whose length exceeds req_cap is answered Malformed.
    let c0 = ctl(0);
    raw.u64(c0 + SEQ).store(1, Ordering::Relaxed);
    raw.u32(c0 + METHOD).store(0xdead_beef, Ordering::Relaxed);
    raw.u32(c0 + REQ_LEN).store(u32::MAX, Ordering::Relaxed);
    raw.u32(c0 + STATE).store(POSTED, Ordering::SeqCst);
    ring();
    wait_until("a Malformed reply", || raw.state(0) == REPLIED);
    assert_eq!(
        Status::from_wire(raw.u32(c0 + STATUS).load(Ordering::Acquire)),
        Some(Status::Malformed)
    );
    assert_eq!(raw.u32(c0 + REPLY_LEN).load(Ordering::Acquire), 0);

    // 2. Random garbage everywhere in the hostile channel while an honest client works on the
    // other one through the same server.
    let honest = ClientChannel::map(&good_fd).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut reply = Vec::new();
    let ctl_end = ctl(layout.nslots as usize);
    for i in 0..3000u32 {
        for _ in 0..4 {
            let r = rng.next();
            let off = ((r as usize) % raw.len()) & !3;
            let val = match r >> 60 {
                0..=3 => POSTED, // posts with whatever lengths happen to be there
                4 => u32::MAX,
                5 => 129, // just over req_cap
                6 => (r >> 32) as u32 & 0xff,
                _ => (r >> 32) as u32,
            };
            // Mostly the control blocks, sometimes anywhere (header, areas).
            let off = if r & 3 != 0 {
                (ctl(0) + off % (ctl_end - ctl(0))) & !3
            } else {
                off
            };
            raw.u32(off).store(val, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        ring();
        let req = payload(7, i, 128);
        let r = honest
            .call(3, &req, &mut reply, Some(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(r.status, Status::Ok);
        assert_eq!(reply, req);
    }

    // The server is alive and well: a fresh call works, and it exits normally when told to.
    let r = honest.call(3, b"still there?", &mut reply, None).unwrap();
    assert_eq!(
        (r.status, reply.as_slice()),
        (Status::Ok, &b"still there?"[..])
    );
    sbell.notify(EVENT_STOP);
    assert_eq!(
        srv.wait_within(Duration::from_secs(60)).unwrap(),
        Some(0),
        "the server must neither panic nor crash (None: it hung)"
    );
}

fn sealed_memfd(size: u64, init: impl FnOnce(&RawMap)) -> std::os::fd::OwnedFd {
    let fd =
        rustix::fs::memfd_create("test", MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    if size >= 4096 {
        init(&RawMap::new(&fd, 4096));
    }
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    fd
}

#[test]
fn mapping_rejects_bad_fds_with_clear_errors() {
    let magic = u64::from_le_bytes(*b"TXIPCCH1");
    let write_header = |m: &RawMap, nslots: u32, cap: u32| {
        m.u64(0).store(magic, Ordering::Relaxed);
        m.u32(8).store(4, Ordering::Relaxed);
        m.u32(12).store(nslots, Ordering::Relaxed);
        m.u32(16).store(cap, Ordering::Relaxed);
        m.u32(20).store(cap, Ordering::Relaxed);
    };

    let tiny = sealed_memfd(100, |_| {});
    assert!(matches!(
        ServerChannel::map(&tiny),
        Err(ChanError::TooSmall { actual: 100, .. })
    ));

    let zeros = sealed_memfd(4096, |_| {});
    assert!(matches!(
        KernelChannel::map(&zeros),
        Err(ChanError::BadMagic { found: 0, .. })
    ));
    assert!(matches!(
        Doorbell::map(&zeros),
        Err(ChanError::BadMagic {
            what: "doorbell",
            ..
        })
    ));

    let version = sealed_memfd(4096, |m| {
        write_header(m, 1, 64);
        m.u32(8).store(99, Ordering::Relaxed);
    });
    assert!(matches!(
        ServerChannel::map(&version),
        Err(ChanError::BadVersion { found: 99, .. })
    ));

    // A header that claims more than the fd holds.
    let liar = sealed_memfd(4096, |m| write_header(m, 64, 4096));
    let e = ServerChannel::map(&liar).unwrap_err();
    assert!(matches!(e, ChanError::TooSmall { actual: 4096, .. }), "{e}");

    // A header beyond the limits.
    let huge = sealed_memfd(4096, |m| write_header(m, 100_000, 64));
    assert!(matches!(
        ServerChannel::map(&huge),
        Err(ChanError::BadLayout(_))
    ));

    // A well-formed channel that a peer could still shrink.
    let unsealed = rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, 8192).unwrap();
    write_header(&RawMap::new(&unsealed, 4096), 1, 64);
    assert!(matches!(
        ServerChannel::map(&unsealed),
        Err(ChanError::NotSealed { .. })
    ));

    // A doorbell is not a channel and the other way round.
    let bell = create_doorbell().unwrap();
    let chan = create_channel("c", ChannelLayout::default()).unwrap();
    assert!(matches!(
        ServerChannel::map(&bell),
        Err(ChanError::BadMagic { .. })
    ));
    assert!(matches!(
        Doorbell::map(&chan),
        Err(ChanError::BadMagic { .. })
    ));
    assert!(matches!(
        ClientChannel::map(&bell),
        Err(ChanError::BadMagic { .. })
    ));
    assert!(ClientChannel::map(&chan).is_ok());

    // Our own channels are sealed: nobody can shrink them under a peer.
    assert!(rustix::fs::ftruncate(&chan, 0).is_err());
    assert!(
        create_channel(
            "x",
            ChannelLayout {
                nslots: 0,
                req_cap: 1,
                reply_cap: 1
            }
        )
        .is_err()
    );
}

/// A lying server (untrusted by the client): unknown status, impossible reply length, a state
/// the protocol never writes. The client reports an error and never reads out of bounds.
#[test]
fn client_rejects_a_lying_server() {
    let layout = ChannelLayout {
        nslots: 1,
        req_cap: 64,
        reply_cap: 64,
    };
    let fd = create_channel("liar", layout).unwrap();
    let raw = RawMap::new(&fd, layout.total_size());
    let server = ServerChannel::map(&fd).unwrap();
    let client = ClientChannel::map(&fd).unwrap().with_spin(SpinConfig {
        mode: SpinMode::Pure,
        budget: Duration::ZERO,
    });

    type Lie = fn(&RawMap);
    let cases: [(&str, Lie); 3] = [
        ("unknown status", |m| {
            m.u32(ctl(0) + STATUS).store(999, Ordering::Relaxed)
        }),
        ("reply longer than reply_cap", |m| {
            m.u32(ctl(0) + REPLY_LEN).store(65, Ordering::Relaxed)
        }),
        ("reply length u32::MAX", |m| {
            m.u32(ctl(0) + REPLY_LEN).store(u32::MAX, Ordering::Relaxed)
        }),
    ];
    for (what, lie) in cases {
        std::thread::scope(|s| {
            let h = s.spawn(|| client.call(1, b"q", &mut Vec::new(), None));
            wait_until("the request", || raw.state(0) == POSTED);
            let t = server.try_take().unwrap();
            server.write_reply(t.slot, Status::Ok, b"fine").unwrap();
            lie(&raw);
            server.publish(t.slot).unwrap();
            let e = h.join().unwrap().unwrap_err();
            match what {
                "unknown status" => assert!(matches!(e, ChanError::BadStatus(999)), "{e}"),
                _ => assert!(matches!(e, ChanError::ReplyTooLarge { .. }), "{what}: {e}"),
            }
        });
    }

    // A state the protocol never writes, and a reply announced on it.
    std::thread::scope(|s| {
        let h = s.spawn(|| client.call(1, b"q", &mut Vec::new(), None));
        wait_until("the request", || raw.state(0) == POSTED);
        let _t = server.try_take().unwrap();
        raw.u32(ctl(0) + STATE).store(0x77, Ordering::Release);
        // ...and announces a reply for it.
        let seq = raw.u64(ctl(0) + SEQ).load(Ordering::Relaxed) as u32;
        raw.u32(ctl(0) + DONE).store(seq, Ordering::SeqCst);
        rustix::thread::futex::wake(
            raw.u32(ctl(0) + DONE),
            rustix::thread::futex::Flags::empty(),
            1,
        )
        .unwrap();
        assert!(matches!(h.join().unwrap(), Err(ChanError::Protocol(_))));
    });
}
