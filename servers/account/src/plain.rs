//! The account server with its state in ordinary Rust collections (policy `companion`).
//!
//! The same [`Account`] interface and the same rules as [`crate::AccountServer`], over a
//! `BTreeMap` of balances and a `BTreeMap` ledger keyed by `(name, transfer id, debit|credit)`.
//! Under policy `companion` the generated `AccountCompanion` dispatcher logs every `open` and
//! `apply` before it runs, and a call from a companion bank carries a call id, so an `apply`
//! re-sent by a bank that died before recording the reply is answered again, not applied twice
//! (ARCHITECTURE.md §16). Every handler is deterministic (ordered maps, no clock), as replay
//! requires.

use std::collections::BTreeMap;
use std::ops::Bound;

use bank_api::{Account, AccountCompanion, AccountError, LedgerEntry, MAX_LEDGER_PAGE};
use serde::{Deserialize, Serialize};
use txipc_runtime::PlainBuiltin;
use txipc_service::Distill;

use crate::check_name;

/// The account server's whole state: what a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccountState {
    balances: BTreeMap<String, i64>,
    /// `(name, transfer, credit)` → `(delta, times applied)`.
    ledger: BTreeMap<(String, u64, bool), (i64, u32)>,
}

/// The account server with ordinary Rust state.
#[derive(Debug, Default)]
pub struct AccountPlain {
    state: AccountState,
}

impl Distill for AccountPlain {
    const VERSION: u32 = 1;
    type Snapshot = AccountState;
    fn distill(&self) -> &AccountState {
        &self.state
    }
    fn reconstitute(state: AccountState) -> Self {
        AccountPlain { state }
    }
}

impl Account for AccountPlain {
    fn open(&mut self, name: String, initial: i64) -> Result<(), AccountError> {
        check_name(&name)?;
        if !(0..1 << 53).contains(&initial) {
            return Err(AccountError::BadAmount(initial));
        }
        if self.state.balances.contains_key(&name) {
            return Err(AccountError::Exists(name));
        }
        self.state.balances.insert(name, initial);
        Ok(())
    }

    fn apply(&mut self, name: String, transfer: u64, delta: i64) -> Result<i64, AccountError> {
        check_name(&name)?;
        if delta == 0 || delta.unsigned_abs() >= 1 << 53 {
            return Err(AccountError::BadAmount(delta));
        }
        let balance = *self
            .state
            .balances
            .get(&name)
            .ok_or_else(|| AccountError::NoAccount(name.clone()))?;
        let next = balance + delta;
        if next < 0 {
            return Err(AccountError::Insufficient {
                name,
                balance,
                amount: -delta,
            });
        }
        self.state.balances.insert(name.clone(), next);
        let e = self
            .state
            .ledger
            .entry((name, transfer, delta > 0))
            .or_insert((delta, 0));
        e.1 += 1;
        Ok(next)
    }

    fn balance(&mut self, name: String) -> Result<i64, AccountError> {
        self.state
            .balances
            .get(&name)
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
        if !self.state.balances.contains_key(&name) {
            return Err(AccountError::NoAccount(name));
        }
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let start = (name.clone(), first, false);
        Ok(self
            .state
            .ledger
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(|((n, _, _), _)| *n == name)
            .take(limit.clamp(1, MAX_LEDGER_PAGE) as usize)
            .map(|((_, transfer, _), &(delta, times))| LedgerEntry {
                transfer: *transfer,
                delta,
                times,
            })
            .collect())
    }

    fn list(&mut self) -> Vec<(String, i64)> {
        self.state
            .balances
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// The server as the built-in `account-plain` of the txipc binary.
pub fn builtin() -> PlainBuiltin {
    PlainBuiltin::of::<AccountCompanion<AccountPlain>>("account-plain")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledgers_and_balances_follow_the_heap_servers_rules() {
        let mut a = AccountPlain::default();
        a.open("a".into(), 10).unwrap();
        a.open("ab".into(), 0).unwrap();
        assert_eq!(a.open("a".into(), 1), Err(AccountError::Exists("a".into())));
        assert_eq!(a.apply("a".into(), 7, -4), Ok(6));
        assert_eq!(a.apply("ab".into(), 7, 4), Ok(4));
        assert_eq!(a.apply("a".into(), 9, 3), Ok(9));
        assert!(matches!(
            a.apply("a".into(), 10, -100),
            Err(AccountError::Insufficient { .. })
        ));
        // `a`'s ledger holds only `a`'s entries (not `ab`'s), in transfer order.
        let l = a.ledger("a".into(), 0, 100).unwrap();
        assert_eq!(
            l.iter()
                .map(|e| (e.transfer, e.delta, e.times))
                .collect::<Vec<_>>(),
            vec![(7, -4, 1), (9, 3, 1)]
        );
        assert_eq!(a.ledger("a".into(), 7, 100).unwrap().len(), 1);
        assert_eq!(a.ledger("a".into(), u64::MAX, 100).unwrap().len(), 0);
        assert_eq!(a.list(), vec![("a".into(), 9), ("ab".into(), 4)]);
    }
}
