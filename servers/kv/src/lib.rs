//! The key-value server: an ordered map in the recoverable heap.
#![forbid(unsafe_code)]
