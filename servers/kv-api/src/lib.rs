//! Interface of the key-value service: the Kv trait, its requests, replies and errors.
#![forbid(unsafe_code)]
