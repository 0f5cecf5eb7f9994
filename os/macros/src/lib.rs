//! The #[service] attribute macro.
#![forbid(unsafe_code)]
