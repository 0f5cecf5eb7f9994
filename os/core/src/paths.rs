//! Where a running system is found: `$XDG_RUNTIME_DIR/txipc/NAME.sock`, or
//! `/tmp/txipc-UID/NAME.sock` when there is no runtime directory.

use std::path::{Path, PathBuf};

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

/// The effective owner this process's files get (the uid of `/proc/self`).
fn my_uid() -> Option<u32> {
    std::fs::metadata("/proc/self")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
}

/// Checks that `dir` is a directory (not a symbolic link) owned by this user that no other
/// user may write to: otherwise another user could replace a system's socket with their own
/// and pose as its kernel. The error says what is wrong and what to do.
pub fn check_runtime_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("runtime directory {}: {e}", dir.display()))?;
    let fix = "remove it, or point TXIPC_RUNTIME_DIR at a directory of your own with mode 0700";
    if !m.is_dir() {
        return Err(format!(
            "runtime directory {} is not a directory (a symbolic link or a file): {fix}",
            dir.display()
        ));
    }
    let me = my_uid().unwrap_or(u32::MAX);
    if m.uid() != me {
        return Err(format!(
            "runtime directory {} belongs to uid {}, not to you (uid {me}): another user could pose as your systems; {fix}",
            dir.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "runtime directory {} has mode {:04o}: other users may write to it and replace a system's socket; {fix}",
            dir.display(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Creates `dir` (mode 0700; its parents as needed) if it does not exist, then checks it
/// ([`check_runtime_dir`]).
pub fn create_runtime_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", dir.display())),
    }
    check_runtime_dir(dir)
}

/// The control socket of system `name`.
pub fn socket_path(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.sock"))
}

/// Where system `name`'s log lives: `RUNTIME_DIR/NAME.log`, written by its kernel process
/// while it runs and kept after it stops (for `txipc logs`), until a system of the same name
/// starts again, the log is pruned as one of the oldest stopped ones, or (a private system of
/// a test or benchmark) its `SystemProcess` is dropped.
pub fn log_path(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.log"))
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

    #[test]
    fn runtime_dir_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("txipc-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("rt");
        create_runtime_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_runtime_dir(&dir).unwrap_err();
        assert!(e.contains("mode 0777"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_runtime_dir(&dir).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(
            check_runtime_dir(&link)
                .unwrap_err()
                .contains("symbolic link")
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
