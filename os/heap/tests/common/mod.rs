//! Shared by the multi-process tests: a deterministic workload and its model.
#![allow(dead_code)]

use std::collections::BTreeMap;

use txipc_heap::{HeapError, PBTreeMap, PBytes, PCell, PHashMap, Persistent, Tx};

#[derive(Persistent)]
#[repr(C)]
pub struct Root {
    pub map: PBTreeMap<PBytes, PBytes>,
    pub hm: PHashMap<u64, u64>,
    pub txs: PCell<u64>,
}

pub fn new_root() -> Root {
    Root {
        map: PBTreeMap::new(),
        hm: PHashMap::new(),
        txs: PCell::new(0),
    }
}

#[derive(Default, Clone, Debug, PartialEq)]
pub struct Model {
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
    pub hm: BTreeMap<u64, u64>,
    pub txs: u64,
}

pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    HPut(u64, u64),
    HDel(u64),
}

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The operations of transaction `txid` (deterministic).
pub fn ops_for(txid: u64) -> Vec<Op> {
    let mut s = txid.wrapping_mul(0x1234_5678_9abc_def1);
    let n = 1 + splitmix(&mut s) % 8;
    (0..n)
        .map(|i| {
            let r = splitmix(&mut s);
            let k = format!("key{:04}", r % 300).into_bytes();
            match (r >> 32) % 6 {
                0..=2 => {
                    // Half the values are 48 bytes long: their updates are made in place.
                    let len = if (r >> 40) % 2 == 0 {
                        48
                    } else {
                        12 + (splitmix(&mut s) % 120) as usize
                    };
                    let mut v = format!("{txid}/{i}/").into_bytes();
                    v.resize(len, (txid % 251) as u8);
                    Op::Put(k, v)
                }
                3 => Op::Del(k),
                4 => Op::HPut(r % 500, txid),
                _ => Op::HDel(r % 500),
            }
        })
        .collect()
}

pub fn run_tx(root: &Root, tx: &mut Tx<'_>, txid: u64) -> Result<(), HeapError> {
    for op in ops_for(txid) {
        match op {
            Op::Put(k, v) => root.map.insert(tx, &k, &v).map(drop)?,
            Op::Del(k) => root.map.remove(tx, &k).map(drop)?,
            Op::HPut(k, v) => root.hm.insert(tx, k, v).map(drop)?,
            Op::HDel(k) => root.hm.remove(tx, &k).map(drop)?,
        }
    }
    root.txs.update(tx, |n| n + 1).map(drop)
}

/// [`run_tx`] with a savepoint before each operation (as a group commit runs its requests,
/// each behind its own savepoint): the same effects; under page tracking the operations after
/// the first write pages captured before their savepoint (exact-byte records).
pub fn run_tx_steps(root: &Root, tx: &mut Tx<'_>, txid: u64) -> Result<(), HeapError> {
    for op in ops_for(txid) {
        tx.savepoint()?;
        match op {
            Op::Put(k, v) => root.map.insert(tx, &k, &v).map(drop)?,
            Op::Del(k) => root.map.remove(tx, &k).map(drop)?,
            Op::HPut(k, v) => root.hm.insert(tx, k, v).map(drop)?,
            Op::HDel(k) => root.hm.remove(tx, &k).map(drop)?,
        }
    }
    tx.savepoint()?;
    root.txs.update(tx, |n| n + 1).map(drop)
}

pub fn model_tx(m: &mut Model, txid: u64) {
    for op in ops_for(txid) {
        match op {
            Op::Put(k, v) => {
                m.map.insert(k, v);
            }
            Op::Del(k) => {
                m.map.remove(&k);
            }
            Op::HPut(k, v) => {
                m.hm.insert(k, v);
            }
            Op::HDel(k) => {
                m.hm.remove(&k);
            }
        }
    }
    m.txs += 1;
}

pub fn read(root: &Root, tx: &Tx<'_>) -> Model {
    Model {
        map: root
            .map
            .iter(tx)
            .take(1 << 16)
            .map(|(k, v)| (k.as_slice().to_vec(), v.as_slice().to_vec()))
            .collect(),
        hm: root.hm.iter(tx).map(|(k, v)| (*k, *v)).collect(),
        txs: root.txs.get(),
    }
}

/// No core files from children that die of signals on purpose.
pub fn no_core() {
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
}
