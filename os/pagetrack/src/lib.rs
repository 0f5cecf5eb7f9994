//! Page tracking: write-protect a region and capture each page's pre-image on its first write.
#![deny(clippy::undocumented_unsafe_blocks)]
