//! The server runtime: zygote, event loop over channels, and the TxIPC commit protocol.
#![forbid(unsafe_code)]
