//! Derive for the Persistent marker trait.
#![forbid(unsafe_code)]
