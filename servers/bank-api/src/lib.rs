//! Interfaces of the bank example: what clients of `bank` and of `account` servers depend on.
//!
//! A system runs one `bank` server and two or more `account` servers named `account-0`,
//! `account-1`, …; an account lives on the account server chosen by [`home`]. A transfer
//! debits one account and credits another (possibly on the same account server, possibly the
//! same account), and every account keeps a ledger of the transfers that touched it, by
//! transfer id: a lost transfer is missing from a ledger, a repeated one shows `times > 1`.
//!
//! Under policy `txipc` a transfer is one transaction across the bank and both account
//! servers (nested transactions): whatever server dies at whatever instant, it happens exactly
//! once or not at all, and the total of all balances never changes.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use txipc_service::service;

/// Longest account name, in bytes.
pub const MAX_NAME: usize = 64;
/// Most ledger entries one `ledger` call returns.
pub const MAX_LEDGER_PAGE: u32 = 256;
/// Most account servers a bank uses (`account-0` … `account-15`).
pub const MAX_ACCOUNT_SERVERS: usize = 16;

/// The manifest name of account server `k`.
pub fn account_server(k: usize) -> String {
    format!("account-{k}")
}

/// Which of `n` account servers holds account `name` (FNV-1a of the name, modulo `n`).
pub fn home(name: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

/// One ledger entry: transfer `transfer` changed the balance by `delta`, `times` times (1 when
/// all is well).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The transfer's id.
    pub transfer: u64,
    /// The change it made: negative for the debit, positive for the credit.
    pub delta: i64,
    /// How many times it was applied: 1, or more for a repeated transfer.
    pub times: u32,
}

/// Errors of an account server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AccountError {
    /// No such account on this server.
    #[error("no account `{0}`")]
    NoAccount(String),
    /// The account exists already.
    #[error("account `{0}` exists already")]
    Exists(String),
    /// The debit would make the balance negative; nothing changed.
    #[error("account `{name}` holds {balance}, cannot pay {amount}")]
    Insufficient {
        /// The account.
        name: String,
        /// Its balance.
        balance: i64,
        /// What was asked.
        amount: i64,
    },
    /// A name longer than [`MAX_NAME`] bytes, or empty.
    #[error("account names are 1..={MAX_NAME} bytes, got {0}")]
    BadName(usize),
    /// Amounts are positive and below 2^53.
    #[error("amount {0} is not in 1..2^53")]
    BadAmount(i64),
    /// The server's heap (or undo log) is full; nothing changed.
    #[error("the account server is full ({0}); nothing changed")]
    Full(String),
}

/// An account server: balances and ledgers.
#[service]
pub trait Account {
    /// Opens account `name` with `initial` units.
    fn open(&mut self, name: String, initial: i64) -> Result<(), AccountError>;
    /// Changes the balance of `name` by `delta` as part of transfer `transfer` and records it
    /// in the ledger. A debit larger than the balance changes nothing. Returns the new balance.
    fn apply(&mut self, name: String, transfer: u64, delta: i64) -> Result<i64, AccountError>;
    /// The balance of `name`.
    #[readonly]
    fn balance(&mut self, name: String) -> Result<i64, AccountError>;
    /// Up to `limit` ledger entries of `name` for transfers with an id greater than `after`,
    /// in id order (debit before credit for a transfer to the same account).
    #[readonly]
    fn ledger(
        &mut self,
        name: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, AccountError>;
    /// Every account of this server with its balance.
    #[readonly]
    fn list(&mut self) -> Vec<(String, i64)>;
}

/// Errors of the bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BankError {
    /// An account server refused or failed; the message says which and why.
    #[error("{server}: {error}")]
    Account {
        /// The account server.
        server: String,
        /// What it said.
        error: AccountError,
    },
    /// The bank could not reach an account server (not granted, down, or the call failed);
    /// the transfer did not happen.
    #[error("{server}: {message}")]
    Link {
        /// The account server.
        server: String,
        /// What went wrong.
        message: String,
    },
    /// The system has no account server (`account-0` …) the bank may call.
    #[error(
        "no account server: the manifest needs `account-0`, `account-1`, … granted to the bank"
    )]
    NoAccountServers,
}

/// The bank: opens accounts on their account servers and transfers between them.
#[service]
pub trait Bank {
    /// Opens `name` with `initial` units on its account server; returns that server's name.
    fn open(&mut self, name: String, initial: i64) -> Result<String, BankError>;
    /// Transfer `id`: moves `amount` from `from` to `to` (one transaction across both account
    /// servers). A failed transfer changes nothing.
    fn transfer(&mut self, id: u64, from: String, to: String, amount: i64)
    -> Result<(), BankError>;
    /// The balance of `name`.
    #[readonly]
    fn balance(&mut self, name: String) -> Result<i64, BankError>;
    /// The sum of every balance on every account server (one transaction: a consistent total).
    #[readonly]
    fn total(&mut self) -> Result<i64, BankError>;
    /// Ledger entries of `name` (as [`Account::ledger`]).
    #[readonly]
    fn ledger(
        &mut self,
        name: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, BankError>;
    /// Every account with its balance and its account server.
    #[readonly]
    fn accounts(&mut self) -> Result<Vec<(String, i64, String)>, BankError>;
    /// Transfers committed by the bank.
    #[readonly]
    fn transfers(&mut self) -> u64;
}
