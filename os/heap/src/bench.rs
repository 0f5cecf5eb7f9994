//! Transaction cost benchmarks.
