//! The floor under a long reply: the raw spinning ping-pong, and the same with a reply of N
//! bytes moved each of the ways of `ReplyPath` (plain copies; the caller prefetching every
//! line; the partner claiming every line with `prefetchw` first; both; the caller pulling
//! the lines at every poll), then the channel alone with an 8-byte echo and with an N-byte
//! reply (`EchoChannel::with_reply`: the channel's own data path), cross-core, in
//! interleaved batches (each round runs one batch of each in turn, starting with another reply
//! path each round, so a change of load hits them alike).
//!
//! `cargo run --release -p txipc-chan --example reply_floor -- [ROUNDS] [BYTES] [ITERATIONS]`
//! (defaults 21, 1000, 20000) prints, per row, the median batch mean, the tenth percentile and
//! the fastest, and each reply path's excess over the plain spin (median of the per-round
//! differences). On a shared machine use short batches and many rounds, and read the
//! percentile: a batch with a preemption in it says nothing.

use txipc_chan::SpinConfig;
use txipc_chan::baseline::{self, EchoChannel, PingPong, Placement, ReplyPath};

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(21);
    let bytes: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let iterations: u32 = args.next().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let warm = 2000;
    let mut spin = PingPong::start(Placement::CrossCore, false).expect("raw spin");
    let mut paths: Vec<(ReplyPath, PingPong)> = ReplyPath::ALL
        .iter()
        .map(|&p| {
            (
                p,
                PingPong::with_reply_path(Placement::CrossCore, bytes, p).expect("reply partner"),
            )
        })
        .collect();
    let mut chan = EchoChannel::start(
        Placement::CrossCore,
        SpinConfig::default(),
        baseline::SERVER_SPIN,
    )
    .expect("channel");
    let mut chan_reply = EchoChannel::with_reply(
        Placement::CrossCore,
        SpinConfig::default(),
        baseline::SERVER_SPIN,
        bytes,
    )
    .expect("channel with a reply");
    let (mut c, mut cr) = (Vec::new(), Vec::new());
    let mut s = Vec::new();
    let mut r: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let n = paths.len();
    for round in 0..rounds {
        s.push(spin.batch(warm, iterations).expect("spin batch"));
        // Each round starts with another path: no path always follows the plain spin.
        for k in 0..n {
            let i = (round + k) % n;
            let t = paths[i].1.batch(warm, iterations).expect("reply batch");
            r[i].push(t);
        }
        c.push(chan.batch(warm, iterations).expect("channel batch"));
        cr.push(
            chan_reply
                .batch(warm, iterations)
                .expect("channel reply batch"),
        );
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let p10 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 10]
    };
    println!("cross-core, {rounds} rounds of {iterations} round trips, reply {bytes} bytes");
    println!(
        "  raw spin                 median {:>7.1} ns  p10 {:>7.1}  fastest {:>7.1}",
        med(&s),
        p10(&s),
        min(&s)
    );
    for (i, (p, _)) in paths.iter().enumerate() {
        let excess: Vec<f64> = r[i].iter().zip(&s).map(|(a, b)| a - b).collect();
        println!(
            "  reply {:<18} median {:>7.1} ns  p10 {:>7.1}  fastest {:>7.1}  over raw spin {:>6.1} ns",
            format!("{p:?}"),
            med(&r[i]),
            p10(&r[i]),
            min(&r[i]),
            med(&excess)
        );
    }
    let excess: Vec<f64> = cr.iter().zip(&c).map(|(a, b)| a - b).collect();
    println!(
        "  channel, 8-byte echo     median {:>7.1} ns  p10 {:>7.1}  fastest {:>7.1}",
        med(&c),
        p10(&c),
        min(&c)
    );
    println!(
        "  channel, {bytes}-byte reply median {:>7.1} ns  p10 {:>7.1}  fastest {:>7.1}  over the echo {:>6.1} ns",
        med(&cr),
        p10(&cr),
        min(&cr),
        med(&excess)
    );
    chan.stop().expect("stop");
    chan_reply.stop().expect("stop");
    spin.stop().expect("stop");
    for (_, pp) in paths {
        pp.stop().expect("stop");
    }
}
