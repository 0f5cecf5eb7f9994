//! `txipc bank ...`: a client of the bank example (a `bank` server and `account-N` servers).
//!
//! `txipc bank manifest > bank.toml && txipc run bank.toml &` boots a bank system; then
//! `txipc bank open alice 100`, `txipc bank transfer alice bob 30`, `txipc bank balance bob`,
//! `txipc bank total`, `txipc bank ledger alice`, `txipc bank accounts`.

use std::time::Duration;

use anyhow::{Context, Result};
use bank_api::BankClient;
use clap::{Args, Subcommand};
use serde_json::json;
use txipc_runtime::client::System;
use txipc_service::Error as SvcError;

use crate::out::{Report, usage};

/// `txipc bank`.
#[derive(Args, Debug)]
pub struct BankArgs {
    #[command(subcommand)]
    op: BankOp,
}

#[derive(Subcommand, Debug)]
enum BankOp {
    /// Print a manifest of a bank system (a `bank` server, N account servers).
    Manifest {
        /// Account servers.
        #[arg(long, default_value_t = 2)]
        accounts: usize,
        /// Policy of every server: txipc, companion, restart or none.
        #[arg(long, default_value = "txipc")]
        policy: String,
        /// The system's name.
        #[arg(long, default_value = "bank")]
        name: String,
    },
    /// Open account NAME with AMOUNT units.
    Open {
        /// The account.
        name: String,
        /// Its initial balance.
        amount: i64,
    },
    /// Move AMOUNT units from FROM to TO (one transaction across the account servers).
    Transfer {
        /// The debited account.
        from: String,
        /// The credited account.
        to: String,
        /// How much.
        amount: i64,
        /// The transfer's id in the ledgers (default: from the clock).
        #[arg(long)]
        id: Option<u64>,
    },
    /// The balance of NAME.
    Balance {
        /// The account.
        name: String,
    },
    /// The sum of every balance.
    Total,
    /// The ledger of NAME: every transfer that touched it.
    Ledger {
        /// The account.
        name: String,
    },
    /// Every account, its balance and its account server.
    Accounts,
}

/// The manifest of a bank system: `bank` plus `accounts` account servers (heaps of `heap_mb`
/// MiB: ledgers grow by two entries per transfer), every server under `policy`, the bank
/// granted to everyone and the account servers to the bank.
pub fn manifest(name: &str, accounts: usize, policy: &str, heap_mb: u64, extra: &str) -> String {
    let mut m = format!("name = \"{name}\"\n");
    let server = |n: &str, b: &str| {
        format!(
            "[[server]]\nname = \"{n}\"\nbuiltin = \"{b}\"\npolicy = \"{policy}\"\nheap_mb = {heap_mb}\n{extra}\n"
        )
    };
    // Under policy companion the servers keep ordinary Rust state (the `-plain` built-ins).
    let (bank, account) = if policy == "companion" {
        ("bank-plain", "account-plain")
    } else {
        ("bank", "account")
    };
    m += &server("bank", bank);
    for k in 0..accounts {
        m += &server(&bank_api::account_server(k), account);
    }
    m += "[[grant]]\nclient = \"*\"\nservice = \"bank\"\n";
    for k in 0..accounts {
        m += &format!(
            "[[grant]]\nclient = \"bank\"\nservice = \"{}\"\n",
            bank_api::account_server(k)
        );
    }
    m
}

/// A bank error as the command reports it: an account that does not exist is "not found"
/// (exit code 3), a call error keeps its class (timeout, unavailable, ...).
fn svc(e: SvcError<bank_api::BankError>) -> anyhow::Error {
    match e {
        SvcError::Service(
            e @ bank_api::BankError::Account {
                error: bank_api::AccountError::NoAccount(_),
                ..
            },
        ) => crate::out::Failed {
            kind: crate::out::Kind::NotFound,
            message: format!("the bank refused: {e}"),
            json: json!({}),
            text: String::new(),
        }
        .into(),
        SvcError::Service(e) => anyhow::anyhow!("the bank refused: {e}"),
        SvcError::Call(e) => anyhow::Error::new(e).context("the call to the bank failed"),
    }
}

/// Runs `txipc bank ...` against the system `system` (its bank server `service`).
pub fn run(
    system: &str,
    service: &str,
    timeout: Option<Duration>,
    args: BankArgs,
) -> Result<Report> {
    if let BankOp::Manifest {
        accounts,
        policy,
        name,
    } = &args.op
    {
        if !(1..=bank_api::MAX_ACCOUNT_SERVERS).contains(accounts) {
            return Err(usage(format!(
                "--accounts must be 1..={}",
                bank_api::MAX_ACCOUNT_SERVERS
            )));
        }
        if !["txipc", "companion", "restart", "none"].contains(&policy.as_str()) {
            return Err(usage("--policy is txipc, companion, restart or none"));
        }
        let text = manifest(name, *accounts, policy, 256, "");
        return Ok(Report::new(json!({"ok": true, "manifest": text}), text));
    }
    let sys = System::connect(system)?;
    let mut ch = sys
        .open(service)
        .with_context(|| format!("opening a channel to `{service}`"))?;
    ch.set_timeout(Some(timeout.unwrap_or(Duration::from_secs(30))));
    let bank = BankClient::new(ch);
    match args.op {
        BankOp::Manifest { .. } => unreachable!("handled above"),
        BankOp::Open { name, amount } => {
            let server = bank.open(name.clone(), amount).map_err(svc)?;
            Ok(Report::new(
                json!({"ok": true, "account": name, "balance": amount, "server": server}),
                format!("opened {name} with {amount} on {server}"),
            ))
        }
        BankOp::Transfer {
            from,
            to,
            amount,
            id,
        } => {
            let id = id.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            bank.transfer(id, from.clone(), to.clone(), amount)
                .map_err(svc)?;
            Ok(Report::new(
                json!({"ok": true, "id": id, "from": from, "to": to, "amount": amount}),
                format!("transfer {id}: {amount} from {from} to {to}"),
            ))
        }
        BankOp::Balance { name } => {
            let b = bank.balance(name.clone()).map_err(svc)?;
            Ok(Report::new(
                json!({"ok": true, "account": name, "balance": b}),
                b.to_string(),
            ))
        }
        BankOp::Total => {
            let t = bank.total().map_err(svc)?;
            Ok(Report::new(json!({"ok": true, "total": t}), t.to_string()))
        }
        BankOp::Ledger { name } => {
            let entries = read_ledger(&bank, &name)?;
            let text = entries
                .iter()
                .map(|e| format!("{}\t{:+}\t{}", e.transfer, e.delta, e.times))
                .collect::<Vec<_>>()
                .join("\n");
            let list: Vec<_> = entries
                .iter()
                .map(|e| json!({"transfer": e.transfer, "delta": e.delta, "times": e.times}))
                .collect();
            Ok(Report::new(
                json!({"ok": true, "account": name, "ledger": list}),
                text,
            ))
        }
        BankOp::Accounts => {
            let list = bank.accounts().map_err(svc)?;
            let text = list
                .iter()
                .map(|(a, b, s)| format!("{a}\t{b}\t{s}"))
                .collect::<Vec<_>>()
                .join("\n");
            let total: i64 = list.iter().map(|x| x.1).sum();
            let v: Vec<_> = list
                .iter()
                .map(|(a, b, s)| json!({"account": a, "balance": b, "server": s}))
                .collect();
            Ok(Report::new(
                json!({"ok": true, "accounts": v, "total": total}),
                text,
            ))
        }
    }
}

/// Every ledger entry of `name`, page by page.
pub fn read_ledger<T: txipc_service::Transport>(
    bank: &BankClient<T>,
    name: &str,
) -> Result<Vec<bank_api::LedgerEntry>> {
    let mut out: Vec<bank_api::LedgerEntry> = Vec::new();
    let mut after = 0u64;
    loop {
        let page = bank
            .ledger(name.to_string(), after, bank_api::MAX_LEDGER_PAGE)
            .map_err(svc)?;
        let full = page.len() == bank_api::MAX_LEDGER_PAGE as usize;
        let Some(last) = page.last().map(|e| e.transfer) else {
            return Ok(out);
        };
        // A page can end between the debit and the credit of one id (a transfer to the same
        // account): drop that id and read it again with the next page.
        let keep_to = if full { last - 1 } else { last };
        out.extend(page.into_iter().filter(|e| e.transfer <= keep_to));
        if !full {
            return Ok(out);
        }
        after = keep_to;
    }
}
