//! The account server of the bank example: balances and per-account ledgers.
//!
//! Its state is an [`AccountRoot`] in the recoverable heap: an ordered map from account name to
//! balance, and an ordered ledger keyed by `(name, transfer id, debit|credit)` whose value
//! records the change and how many times it was applied. A transfer applied twice shows
//! `times = 2`; a lost one is missing. The bank calls [`Account::apply`] from inside its own
//! request, so under policy `txipc` the call is a sub-transaction of the bank's transaction
//! (ARCHITECTURE.md §13): it commits or rolls back with the transfer as a whole.
#![forbid(unsafe_code)]

use std::ops::Bound;

pub mod plain;

use bank_api::{Account, AccountDispatcher, AccountError, LedgerEntry, MAX_LEDGER_PAGE, MAX_NAME};
use txipc_heap::{HeapError, PBTreeMap, PBytes, Persistent, Tx};
use txipc_runtime::{Builtin, Instance, StartArgs, TxCell, TxHost};

/// The account server's state in the heap.
#[derive(Persistent)]
#[repr(C)]
pub struct AccountRoot {
    balances: PBTreeMap<PBytes, i64>,
    ledger: PBTreeMap<PBytes, PBytes>,
}

impl std::fmt::Debug for AccountRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRoot")
            .field("accounts", &self.balances.len())
            .field("ledger_entries", &self.ledger.len())
            .finish()
    }
}

/// The account server.
#[derive(Debug)]
pub struct AccountServer {
    root: &'static AccountRoot,
    tx: TxCell,
}

impl TxHost for AccountServer {
    fn tx_cell(&mut self) -> &mut TxCell {
        &mut self.tx
    }
}

fn check_name(name: &str) -> Result<(), AccountError> {
    if name.is_empty() || name.len() > MAX_NAME || name.as_bytes().contains(&0) {
        return Err(AccountError::BadName(name.len()));
    }
    Ok(())
}

/// Ledger key: name, NUL, transfer id (big-endian, so keys sort by id), 0 debit / 1 credit.
fn ledger_key(name: &str, transfer: u64, credit: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 10);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&transfer.to_be_bytes());
    k.push(u8::from(credit));
    k
}

fn entry_value(delta: i64, times: u32) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..8].copy_from_slice(&delta.to_le_bytes());
    v[8..].copy_from_slice(&times.to_le_bytes());
    v
}

fn parse_entry(key: &[u8], value: &[u8]) -> Option<LedgerEntry> {
    let n = key.len();
    if n < 10 || value.len() != 12 {
        return None;
    }
    Some(LedgerEntry {
        transfer: u64::from_be_bytes(key[n - 9..n - 1].try_into().ok()?),
        delta: i64::from_le_bytes(value[..8].try_into().ok()?),
        times: u32::from_le_bytes(value[8..].try_into().ok()?),
    })
}

/// Runs `f` all-or-nothing: on a full heap or log its partial updates are undone (back to a
/// savepoint) and the request answers `Full`. Any other heap error is a bug: it faults, and
/// recovery rolls the request back.
fn atomically<T>(
    tx: &mut Tx<'static>,
    f: impl FnOnce(&mut Tx<'static>) -> Result<T, HeapError>,
) -> Result<T, AccountError> {
    let sp = tx.savepoint().expect("savepoint");
    match f(tx) {
        Ok(v) => Ok(v),
        Err(e @ (HeapError::Full { .. } | HeapError::LogFull { .. })) => {
            let _ = tx.rollback_to(sp);
            Err(AccountError::Full(e.to_string()))
        }
        Err(e) => panic!("account: heap operation failed: {e}"),
    }
}

impl Account for AccountServer {
    fn open(&mut self, name: String, initial: i64) -> Result<(), AccountError> {
        check_name(&name)?;
        if !(0..1 << 53).contains(&initial) {
            return Err(AccountError::BadAmount(initial));
        }
        let root = self.root;
        let tx = self.tx.tx();
        if root.balances.contains_key(tx, name.as_bytes()) {
            return Err(AccountError::Exists(name));
        }
        atomically(tx, |tx| {
            root.balances
                .insert(tx, name.as_bytes(), initial)
                .map(|_| ())
        })
    }

    fn apply(&mut self, name: String, transfer: u64, delta: i64) -> Result<i64, AccountError> {
        check_name(&name)?;
        if delta == 0 || delta.unsigned_abs() >= 1 << 53 {
            return Err(AccountError::BadAmount(delta));
        }
        let root = self.root;
        let tx = self.tx.tx();
        let balance = *root
            .balances
            .get(tx, name.as_bytes())
            .ok_or_else(|| AccountError::NoAccount(name.clone()))?;
        let next = balance + delta;
        if next < 0 {
            return Err(AccountError::Insufficient {
                name,
                balance,
                amount: -delta,
            });
        }
        let key = ledger_key(&name, transfer, delta > 0);
        let times = root
            .ledger
            .get(tx, &key)
            .and_then(|v| parse_entry(&key, v.as_slice()))
            .map_or(0, |e| e.times);
        atomically(tx, |tx| {
            root.balances.insert(tx, name.as_bytes(), next)?;
            root.ledger
                .insert(tx, &key, &entry_value(delta, times + 1))?;
            Ok(next)
        })
    }

    fn balance(&mut self, name: String) -> Result<i64, AccountError> {
        let tx = self.tx.tx();
        self.root
            .balances
            .get(tx, name.as_bytes())
            .copied()
            .ok_or(AccountError::NoAccount(name))
    }

    fn ledger(
        &mut self,
        name: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, AccountError> {
        check_name(&name)?;
        let tx = self.tx.tx();
        if !self.root.balances.contains_key(tx, name.as_bytes()) {
            return Err(AccountError::NoAccount(name));
        }
        let start = match after.checked_add(1) {
            Some(first) => ledger_key(&name, first, false),
            None => return Ok(Vec::new()),
        };
        let mut end = name.as_bytes().to_vec();
        end.push(1);
        Ok(self
            .root
            .ledger
            .range(tx, Bound::Included(&start[..]), Bound::Excluded(&end[..]))
            .take(limit.clamp(1, MAX_LEDGER_PAGE) as usize)
            .filter_map(|(k, v)| parse_entry(k.as_slice(), v.as_slice()))
            .collect())
    }

    fn list(&mut self) -> Vec<(String, i64)> {
        let tx = self.tx.tx();
        self.root
            .balances
            .iter(tx)
            .map(|(k, v)| (String::from_utf8_lossy(k.as_slice()).into_owned(), *v))
            .collect()
    }
}

fn start(args: StartArgs<'_>) -> Result<Box<dyn Instance>, String> {
    let root = args
        .heap
        .root_or_init(|_tx| {
            Ok(AccountRoot {
                balances: PBTreeMap::new(),
                ledger: PBTreeMap::new(),
            })
        })
        .map_err(|e| format!("account: {e}"))?;
    Ok(Box::new(AccountDispatcher::new(AccountServer {
        root,
        tx: TxCell::new(),
    })))
}

/// The built-in `account` server.
pub const BUILTIN: Builtin = Builtin {
    name: "account",
    start,
};
