//! Where a running system is found: `$XDG_RUNTIME_DIR/txipc/NAME.sock`, or
//! `/tmp/txipc-UID/NAME.sock` when there is no runtime directory.

use std::path::PathBuf;

/// The directory holding the sockets of this user's running systems.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TXIPC_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("txipc"),
        _ => {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap_or(0);
            PathBuf::from(format!("/tmp/txipc-{uid}"))
        }
    }
}

/// The control socket of system `name`.
pub fn socket_path(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.sock"))
}

/// Checks a system name: letters, digits, `-`, `_`, `.`; 1 to 64 characters; not starting with `.`.
pub fn valid_system_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_system_name("default"));
        assert!(valid_system_name("t-1.x_2"));
        assert!(!valid_system_name(""));
        assert!(!valid_system_name("../etc"));
        assert!(!valid_system_name("a/b"));
        assert!(!valid_system_name(".hidden"));
    }
}
