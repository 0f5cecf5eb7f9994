//! The bank with its state in ordinary Rust data (policy `companion`).
//!
//! The same [`Bank`] interface as [`crate::BankServer`], for a system whose servers run under
//! policy `companion`. There are no transactions: a transfer is the debit, then the credit,
//! each an ordinary call to an account server. The bank remembers the accounts opened through
//! it (the account servers are granted to the bank alone), so a transfer to an account that
//! does not exist is refused before anything is debited. What makes it happen exactly once across faults is the companion: the
//! bank's log records the transfer request and every call it made with its reply, so a replay
//! after a fault of the bank answers those calls from the record instead of sending them again;
//! and each call carries a call id, so a call the bank sent but had not recorded when it died
//! is answered by the account server from its own record, not applied twice
//! (ARCHITECTURE.md §16). The credit cannot be refused once the debit is applied (the account
//! exists, and the amount was checked), unless the account server is down for good or fails the
//! credit as a poison request: then the transfer fails with `Link` and the debit stays, which
//! under policy `txipc` a rollback would undo.

use bank_api::{AccountError, Bank, BankCompanion, BankError, LedgerEntry};
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use txipc_runtime::PlainBuiltin;
use txipc_service::Distill;

use crate::route::{Accounts, account_err};

/// The bank's whole state: what a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BankState {
    transfers: u64,
    /// Accounts opened through this bank.
    accounts: BTreeSet<String>,
}

/// The bank with ordinary Rust state. `FAULTY` (the built-in `bank-plain-faulty`, for tests):
/// a transfer from an account whose name starts with `poison/` faults (panics) right after its
/// debit call, every time it runs — a poison request that has made a call to another server.
#[derive(Debug, Default)]
pub struct BankPlain<const FAULTY: bool = false> {
    state: BankState,
    /// The account servers it calls (not state: found again by each incarnation).
    accounts: Accounts,
}

impl<const FAULTY: bool> Distill for BankPlain<FAULTY> {
    const VERSION: u32 = 1;
    type Snapshot = BankState;
    fn distill(&self) -> &BankState {
        &self.state
    }
    fn reconstitute(state: BankState) -> Self {
        BankPlain {
            state,
            accounts: Accounts::default(),
        }
    }
}

impl<const FAULTY: bool> Bank for BankPlain<FAULTY> {
    fn open(&mut self, name: String, initial: i64) -> Result<String, BankError> {
        let (server, acct) = self.accounts.account_of(&name)?;
        acct.open(name.clone(), initial)
            .map_err(|e| account_err(&server, e))?;
        self.state.accounts.insert(name);
        Ok(server)
    }

    fn transfer(
        &mut self,
        id: u64,
        from: String,
        to: String,
        amount: i64,
    ) -> Result<(), BankError> {
        if amount <= 0 || amount >= 1 << 53 {
            return Err(BankError::Account {
                server: "bank".into(),
                error: AccountError::BadAmount(amount),
            });
        }
        for name in [&from, &to] {
            if !self.state.accounts.contains(name) {
                let (server, _) = self.accounts.account_of(name)?;
                return Err(BankError::Account {
                    server,
                    error: AccountError::NoAccount(name.clone()),
                });
            }
        }
        let (fs, debit) = self.accounts.account_of(&from)?;
        let (ts, credit) = self.accounts.account_of(&to)?;
        let poison = FAULTY && from.starts_with("poison/");
        debit
            .apply(from, id, -amount)
            .map_err(|e| account_err(&fs, e))?;
        if poison {
            panic!("bank-plain-faulty: transfer {id} is a poison request (its debit is made)");
        }
        credit
            .apply(to, id, amount)
            .map_err(|e| account_err(&ts, e))?;
        self.state.transfers += 1;
        Ok(())
    }

    fn balance(&mut self, name: String) -> Result<i64, BankError> {
        self.accounts.balance(name)
    }

    fn total(&mut self) -> Result<i64, BankError> {
        self.accounts.total()
    }

    fn ledger(
        &mut self,
        name: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, BankError> {
        self.accounts.ledger(name, after, limit)
    }

    fn accounts(&mut self) -> Result<Vec<(String, i64, String)>, BankError> {
        self.accounts.accounts()
    }

    fn transfers(&mut self) -> u64 {
        self.state.transfers
    }
}

/// The server as the built-in `bank-plain` of the txipc binary.
pub fn builtin() -> PlainBuiltin {
    PlainBuiltin::of::<BankCompanion<BankPlain>>("bank-plain")
}

/// The faulty variant as the built-in `bank-plain-faulty` (tests only): a transfer from a
/// `poison/` account faults after its debit call, every time.
pub fn faulty_builtin() -> PlainBuiltin {
    PlainBuiltin::of::<BankCompanion<BankPlain<true>>>("bank-plain-faulty")
}
