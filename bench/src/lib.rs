//! Cross-process benchmarks: IPC round trips, YCSB, recovery time.
#![forbid(unsafe_code)]
