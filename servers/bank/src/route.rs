//! The account servers as both banks see them: how many the manifest grants, which one holds
//! an account, and the requests that only read them. [`crate::BankServer`] (policy `txipc`)
//! and [`crate::plain::BankPlain`] (policy `companion`) differ in how a transfer is made
//! exactly once, not in how they find and read accounts, so that part is this one type.

use bank_api::{
    AccountClient, AccountError, BankError, LedgerEntry, MAX_ACCOUNT_SERVERS, account_server, home,
};
use txipc_runtime::Outgoing;
use txipc_service::Error as SvcError;

/// A call to `server` that failed below the service (the channel, the server gone).
pub(crate) fn link(server: &str, e: impl std::fmt::Display) -> BankError {
    BankError::Link {
        server: server.into(),
        message: e.to_string(),
    }
}

/// An account server's answer as the bank's error, naming the server.
pub(crate) fn account_err(server: &str, e: SvcError<AccountError>) -> BankError {
    match e {
        SvcError::Service(error) => BankError::Account {
            server: server.into(),
            error,
        },
        SvcError::Call(c) => link(server, c),
    }
}

/// The account servers granted to the bank: `account-0`, `account-1`, … until one is not.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    /// How many account servers the manifest gives the bank (found at the first request; the
    /// manifest does not change, so a replay or a new incarnation finds the same).
    servers: Option<usize>,
}

impl Accounts {
    /// The number of account servers (counted once, at the first request that needs it).
    pub(crate) fn servers(&mut self) -> Result<usize, BankError> {
        if let Some(n) = self.servers {
            return Ok(n);
        }
        let mut n = 0;
        while n < MAX_ACCOUNT_SERVERS && txipc_runtime::connect(&account_server(n)).is_ok() {
            n += 1;
        }
        if n == 0 {
            return Err(BankError::NoAccountServers);
        }
        self.servers = Some(n);
        Ok(n)
    }

    /// Account server `k`: its name and a client of it.
    pub(crate) fn account(
        &mut self,
        k: usize,
    ) -> Result<(String, AccountClient<Outgoing>), BankError> {
        let name = account_server(k);
        let ch = txipc_runtime::connect(&name).map_err(|e| link(&name, e))?;
        Ok((name, AccountClient::new(ch)))
    }

    /// The account server that holds account `name`.
    pub(crate) fn account_of(
        &mut self,
        name: &str,
    ) -> Result<(String, AccountClient<Outgoing>), BankError> {
        let n = self.servers()?;
        self.account(home(name, n))
    }

    /// `Bank::balance`: asks the account's server.
    pub(crate) fn balance(&mut self, name: String) -> Result<i64, BankError> {
        let (server, acct) = self.account_of(&name)?;
        acct.balance(name).map_err(|e| account_err(&server, e))
    }

    /// `Bank::total`: the sum of every account on every server.
    pub(crate) fn total(&mut self) -> Result<i64, BankError> {
        let n = self.servers()?;
        let mut total = 0i64;
        for k in 0..n {
            let (server, acct) = self.account(k)?;
            let list = acct.list().map_err(|e| link(&server, e))?;
            total += list.iter().map(|(_, b)| b).sum::<i64>();
        }
        Ok(total)
    }

    /// `Bank::ledger`: the account's entries after `after`, at most `limit`.
    pub(crate) fn ledger(
        &mut self,
        name: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, BankError> {
        let (server, acct) = self.account_of(&name)?;
        acct.ledger(name, after, limit)
            .map_err(|e| account_err(&server, e))
    }

    /// `Bank::accounts`: every account with its balance and the server holding it.
    pub(crate) fn accounts(&mut self) -> Result<Vec<(String, i64, String)>, BankError> {
        let n = self.servers()?;
        let mut out = Vec::new();
        for k in 0..n {
            let (server, acct) = self.account(k)?;
            let list = acct.list().map_err(|e| link(&server, e))?;
            out.extend(list.into_iter().map(|(a, b)| (a, b, server.clone())));
        }
        Ok(out)
    }
}
