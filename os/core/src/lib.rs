//! Pure logic of txipc: manifests, control messages, the slot recovery decision and restart policy, testable without processes.
#![forbid(unsafe_code)]
