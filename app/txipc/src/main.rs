//! The `txipc` command.
#![forbid(unsafe_code)]

fn main() {}
