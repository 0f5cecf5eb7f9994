//! Servers for tests and benchmarks.
//!
//! - `null`: the null call (`ping`) and an echo, for IPC round-trip measurements;
//! - `faulty`: 64 counters in the recoverable heap, and an `add` that can fault *after* it
//!   changed its counter (panic, SIGSEGV, abort, hang, exit), on the first N attempts of the
//!   request. Recovery is then visible: the counter must show the delta exactly once, or not at
//!   all for a poison request.
//!
//! The interface and the server share this crate because only tests and benchmarks use them;
//! real services keep the two apart (see `kv-api` and `kv-server`).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use txipc_heap::{HeapError, PCell, Persistent};
use txipc_runtime::{Builtin, Instance, StartArgs, TxCell, TxHost};
use txipc_service::{Bytes, service};

/// The null service.
#[service]
pub trait Null {
    /// Does nothing.
    fn ping(&mut self);
    /// Returns its argument.
    fn echo(&mut self, data: Bytes) -> Bytes;
}

/// The `null` server.
#[derive(Debug, Default)]
pub struct NullServer {
    tx: TxCell,
}

impl TxHost for NullServer {
    fn tx_cell(&mut self) -> &mut TxCell {
        &mut self.tx
    }
}

impl Null for NullServer {
    fn ping(&mut self) {}
    fn echo(&mut self, data: Bytes) -> Bytes {
        data
    }
    /// The echo as the dispatcher serves it: the request's bytes lent straight to the reply.
    fn serve_echo(&mut self, data: &[u8], reply: NullEchoReply<'_>) -> txipc_service::Replied {
        reply.send(&txipc_service::BytesRef(data))
    }
}

fn start_null(_: StartArgs<'_>) -> Result<Box<dyn Instance>, String> {
    Ok(Box::new(NullDispatcher::new(NullServer::default())))
}

/// What `add` does after changing its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Nothing.
    None,
    /// `panic!`.
    Panic,
    /// SIGSEGV.
    Segv,
    /// `abort()` (SIGABRT).
    Abort,
    /// Spin forever (the kernel's deadline catches it).
    Hang,
    /// `exit(3)`: a death without a signal.
    Exit,
}

/// Errors of the faulty service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FaultyError {
    /// No counter of that index.
    #[error("no counter {0} (there are {COUNTERS})")]
    NoCounter(u32),
    /// The heap refused the update.
    #[error("heap: {0}")]
    Heap(String),
    /// The kernel refused the channel, or the call through it failed.
    #[error("link: {0}")]
    Link(String),
}

/// Number of counters.
pub const COUNTERS: usize = 64;

/// The faulty service.
#[service]
pub trait Faulty {
    /// Adds `delta` to counter `index`, then faults with `fault` if this request has been
    /// attempted fewer than `fault_attempts` times before. Returns the new value.
    fn add(
        &mut self,
        index: u32,
        delta: i64,
        fault: Fault,
        fault_attempts: u32,
    ) -> Result<i64, FaultyError>;
    /// Counter `index`.
    #[readonly]
    fn get(&mut self, index: u32) -> Result<i64, FaultyError>;
    /// Sum of all counters.
    #[readonly]
    fn sum(&mut self) -> i64;
    /// Reads counter `index` and faults as `add` does, writing nothing: a request whose
    /// transaction never writes the heap (it is begun lazily and never activates).
    #[readonly]
    fn crash(&mut self, index: u32, fault: Fault, fault_attempts: u32) -> Result<i64, FaultyError>;
    /// Opens (or finds again) a channel to the null service `service`, pings it through the
    /// channel, then faults as `add` does. Returns the channel's index: a kernel object created
    /// inside this request's transaction.
    fn link(
        &mut self,
        service: String,
        fault: Fault,
        fault_attempts: u32,
    ) -> Result<u32, FaultyError>;
    /// Calls `add(index, delta, callee_fault, every attempt)` on the faulty service `service` (a
    /// nested call, part of this request's transaction), then faults as `add` does. Returns
    /// the callee's new value.
    fn relay(
        &mut self,
        service: String,
        index: u32,
        delta: i64,
        callee_fault: Fault,
        fault: Fault,
        fault_attempts: u32,
    ) -> Result<i64, FaultyError>;
}

/// The faulty server's state in the heap.
#[derive(Persistent)]
#[repr(C)]
pub struct FaultyRoot {
    counters: [PCell<i64>; COUNTERS],
}

/// The `faulty` server.
#[derive(Debug)]
pub struct FaultyServer {
    root: &'static FaultyRoot,
    tx: TxCell,
}

impl std::fmt::Debug for FaultyRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyRoot").finish_non_exhaustive()
    }
}

impl TxHost for FaultyServer {
    fn tx_cell(&mut self) -> &mut TxCell {
        &mut self.tx
    }
}

fn do_fault(fault: Fault) {
    match fault {
        Fault::None => {}
        Fault::Panic => panic!("faulty: injected panic"),
        Fault::Segv => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSEGV);
        }
        Fault::Abort => std::process::abort(),
        Fault::Hang => loop {
            std::hint::spin_loop();
        },
        Fault::Exit => std::process::exit(3),
    }
}

impl Faulty for FaultyServer {
    fn add(
        &mut self,
        index: u32,
        delta: i64,
        fault: Fault,
        fault_attempts: u32,
    ) -> Result<i64, FaultyError> {
        let cell = self
            .root
            .counters
            .get(index as usize)
            .ok_or(FaultyError::NoCounter(index))?;
        let tx = self.tx.tx();
        let v = cell
            .update(tx, |v| v.wrapping_add(delta))
            .map_err(|e| FaultyError::Heap(e.to_string()))?;
        if txipc_runtime::current_attempt() < fault_attempts {
            do_fault(fault);
        }
        Ok(v)
    }

    fn get(&mut self, index: u32) -> Result<i64, FaultyError> {
        self.root
            .counters
            .get(index as usize)
            .map(PCell::get)
            .ok_or(FaultyError::NoCounter(index))
    }

    fn crash(&mut self, index: u32, fault: Fault, fault_attempts: u32) -> Result<i64, FaultyError> {
        let v = self.get(index)?;
        if txipc_runtime::current_attempt() < fault_attempts {
            do_fault(fault);
        }
        Ok(v)
    }

    fn sum(&mut self) -> i64 {
        self.root
            .counters
            .iter()
            .map(PCell::get)
            .fold(0, i64::wrapping_add)
    }

    fn link(
        &mut self,
        service: String,
        fault: Fault,
        fault_attempts: u32,
    ) -> Result<u32, FaultyError> {
        let ch = txipc_runtime::connect(&service).map_err(|e| FaultyError::Link(e.to_string()))?;
        let index = ch.info().channel;
        NullClient::new(ch)
            .ping()
            .map_err(|e| FaultyError::Link(e.to_string()))?;
        if txipc_runtime::current_attempt() < fault_attempts {
            do_fault(fault);
        }
        Ok(index)
    }

    fn relay(
        &mut self,
        service: String,
        index: u32,
        delta: i64,
        callee_fault: Fault,
        fault: Fault,
        fault_attempts: u32,
    ) -> Result<i64, FaultyError> {
        let ch = txipc_runtime::connect(&service).map_err(|e| FaultyError::Link(e.to_string()))?;
        let v = FaultyClient::new(ch)
            .add(index, delta, callee_fault, u32::MAX)
            .map_err(|e| FaultyError::Link(e.to_string()))?;
        if txipc_runtime::current_attempt() < fault_attempts {
            do_fault(fault);
        }
        Ok(v)
    }
}

fn start_faulty(args: StartArgs<'_>) -> Result<Box<dyn Instance>, String> {
    let root = args
        .heap
        .root_or_init(|_tx| -> Result<FaultyRoot, HeapError> {
            Ok(FaultyRoot {
                counters: std::array::from_fn(|_| PCell::new(0)),
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(Box::new(FaultyDispatcher::new(FaultyServer {
        root,
        tx: TxCell::new(),
    })))
}

/// The built-in servers of this crate.
pub const BUILTINS: [Builtin; 2] = [
    Builtin {
        name: "null",
        start: start_null,
    },
    Builtin {
        name: "faulty",
        start: start_faulty,
    },
];
