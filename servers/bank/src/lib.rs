//! The bank server of the bank example: transfers between accounts held by account servers.
//!
//! A transfer is one request to the bank, which calls the account server of the debited
//! account (`apply(from, id, -amount)`) and then that of the credited one (`apply(to, id,
//! +amount)`; possibly the same server). Under policy `txipc` both calls are nested calls: the
//! account servers' updates are sub-transactions of the bank's transaction, prepared until the
//! bank commits (ARCHITECTURE.md §13). A refused credit rolls the whole transfer back
//! ([`txipc_runtime::rollback_request`]); a fault anywhere in the tree rolls it back and runs
//! it again from the top. The bank's own state is the count of committed transfers.
//!
//! Account servers are found by name (`account-0`, `account-1`, … as the manifest grants them
//! to the bank); an account lives on `bank_api::home(name, n)`.
#![forbid(unsafe_code)]

use bank_api::{AccountError, Bank, BankDispatcher, BankError, LedgerEntry};
use txipc_heap::{PCell, Persistent};
use txipc_runtime::{Builtin, Instance, StartArgs, TxCell, TxHost};

pub mod plain;
mod route;

use route::{Accounts, account_err, link};

/// The bank's state in the heap.
#[derive(Persistent)]
#[repr(C)]
pub struct BankRoot {
    transfers: PCell<u64>,
}

impl std::fmt::Debug for BankRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BankRoot")
            .field("transfers", &self.transfers.get())
            .finish()
    }
}

/// The bank server.
#[derive(Debug)]
pub struct BankServer {
    root: &'static BankRoot,
    tx: TxCell,
    /// The account servers it calls.
    accounts: Accounts,
}

impl TxHost for BankServer {
    fn tx_cell(&mut self) -> &mut TxCell {
        &mut self.tx
    }
}

impl Bank for BankServer {
    fn open(&mut self, name: String, initial: i64) -> Result<String, BankError> {
        let (server, acct) = self.accounts.account_of(&name)?;
        acct.open(name, initial)
            .map_err(|e| account_err(&server, e))?;
        Ok(server)
    }

    fn transfer(
        &mut self,
        id: u64,
        from: String,
        to: String,
        amount: i64,
    ) -> Result<(), BankError> {
        if amount <= 0 {
            return Err(BankError::Account {
                server: "bank".into(),
                error: AccountError::BadAmount(amount),
            });
        }
        let (fs, debit) = self.accounts.account_of(&from)?;
        // A refused debit changed nothing anywhere.
        debit
            .apply(from, id, -amount)
            .map_err(|e| account_err(&fs, e))?;
        let (ts, credit) = self.accounts.account_of(&to)?;
        if let Err(e) = credit.apply(to, id, amount) {
            // The debit is applied: the whole transfer must go.
            txipc_runtime::rollback_request();
            return Err(account_err(&ts, e));
        }
        let tx = self.tx.tx();
        self.root
            .transfers
            .update(tx, |n| n + 1)
            .map_err(|e| link("bank", e))?;
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
        self.root.transfers.get()
    }
}

fn start(args: StartArgs<'_>) -> Result<Box<dyn Instance>, String> {
    let root = args
        .heap
        .root_or_init(|_tx| {
            Ok(BankRoot {
                transfers: PCell::new(0),
            })
        })
        .map_err(|e| format!("bank: {e}"))?;
    Ok(Box::new(BankDispatcher::new(BankServer {
        root,
        tx: TxCell::new(),
        accounts: Accounts::default(),
    })))
}

/// The built-in `bank` server.
pub const BUILTIN: Builtin = Builtin {
    name: "bank",
    start,
};
