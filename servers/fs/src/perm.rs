//! POSIX permission rules, as pure functions of the caller and the inode.

use fs_api::{Caller, Errno, amode, mode};

use crate::state::Inode;

/// Whether `c` may access `i` with the `access(2)` bits `want` (R_OK | W_OK | X_OK).
///
/// The owner class applies to the owner, the group class to members of the inode's group,
/// the other class to everyone else (classes do not combine). The superuser may read and write
/// anything, and execute a file only if some execute bit is set (search a directory always).
pub(crate) fn may(c: &Caller, i: &Inode, want: u32) -> bool {
    if c.uid == 0 {
        if want & amode::X_OK != 0 && !i.is_dir() && i.mode & 0o111 == 0 {
            return false;
        }
        return true;
    }
    let bits = if c.uid == i.uid {
        (i.mode >> 6) & 7
    } else if c.in_group(i.gid) {
        (i.mode >> 3) & 7
    } else {
        i.mode & 7
    };
    bits & want == want
}

/// `may` as a `Result` with `EACCES`.
pub(crate) fn check(c: &Caller, i: &Inode, want: u32) -> Result<(), Errno> {
    if may(c, i, want) {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

/// Write and search permission on a directory whose entries are to change.
pub(crate) fn check_dir_write(c: &Caller, dir: &Inode) -> Result<(), Errno> {
    check(c, dir, amode::W_OK | amode::X_OK)
}

/// The sticky-directory rule: in a directory with `S_ISVTX`, only the owner of the entry, the
/// owner of the directory or the superuser may remove or rename an entry (`EPERM`).
pub(crate) fn check_sticky(c: &Caller, dir: &Inode, victim: &Inode) -> Result<(), Errno> {
    if dir.mode & mode::S_ISVTX != 0 && c.uid != 0 && c.uid != dir.uid && c.uid != victim.uid {
        return Err(Errno::EPERM);
    }
    Ok(())
}

/// Whether `c` owns `i` (or is the superuser): the right to chmod and to set explicit times.
pub(crate) fn owns(c: &Caller, i: &Inode) -> bool {
    c.uid == 0 || c.uid == i.uid
}

/// Mode bits of a new inode: the requested permission less the umask, with `S_ISGID` dropped
/// when a non-superuser creates a non-directory in a group they are not in (Linux's rule).
pub(crate) fn new_mode(c: &Caller, kind: u32, requested: u32, umask: u32, gid: u32) -> u32 {
    let mut m = requested & mode::PERM & !umask;
    if kind != mode::S_IFDIR && m & mode::S_ISGID != 0 && c.uid != 0 && !c.in_group(gid) {
        m &= !mode::S_ISGID;
    }
    kind | m
}

/// Owner group of a new inode in `parent`: a set-group-id directory passes its group on
/// (BSD semantics), otherwise the caller's group.
pub(crate) fn new_gid(c: &Caller, parent: &Inode) -> u32 {
    if parent.mode & mode::S_ISGID != 0 {
        parent.gid
    } else {
        c.gid
    }
}

/// Checks a name for a new entry: `ENAMETOOLONG` past [`fs_api::MAX_NAME`], `EINVAL` for an
/// empty name or one holding `/` or NUL, `EEXIST` for `.` and `..`.
pub(crate) fn check_new_name(name: &[u8]) -> Result<(), Errno> {
    check_name(name)?;
    if name == b"." || name == b".." {
        return Err(Errno::EEXIST);
    }
    Ok(())
}

/// Checks a name to look up or remove.
pub(crate) fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > fs_api::MAX_NAME {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Inode, Time};

    fn inode(mode: u32, uid: u32, gid: u32) -> Inode {
        Inode::new(mode, uid, gid, Time::default())
    }

    #[test]
    fn classes_do_not_combine() {
        // Owner with no rights is refused even though others may read.
        let f = inode(mode::S_IFREG | 0o004, 1000, 1000);
        assert!(!may(&Caller::user(1000, 1000), &f, amode::R_OK));
        assert!(may(&Caller::user(1001, 1001), &f, amode::R_OK));
        // Group class by supplementary group.
        let g = inode(mode::S_IFREG | 0o040, 0, 50);
        let mut c = Caller::user(1000, 1000);
        assert!(!may(&c, &g, amode::R_OK));
        c.groups.push(50);
        assert!(may(&c, &g, amode::R_OK));
        assert!(!may(&c, &g, amode::W_OK));
    }

    #[test]
    fn superuser_needs_an_execute_bit_for_files_only() {
        let root = Caller::root();
        assert!(may(
            &root,
            &inode(mode::S_IFREG, 5, 5),
            amode::R_OK | amode::W_OK
        ));
        assert!(!may(
            &root,
            &inode(mode::S_IFREG | 0o600, 5, 5),
            amode::X_OK
        ));
        assert!(may(&root, &inode(mode::S_IFREG | 0o010, 5, 5), amode::X_OK));
        assert!(may(&root, &inode(mode::S_IFDIR, 5, 5), amode::X_OK));
    }

    #[test]
    fn sticky_directories_protect_other_users_entries() {
        let tmp = inode(mode::S_IFDIR | 0o1777, 0, 0);
        let theirs = inode(mode::S_IFREG | 0o666, 1001, 1001);
        assert_eq!(
            check_sticky(&Caller::user(1000, 1000), &tmp, &theirs),
            Err(Errno::EPERM)
        );
        assert_eq!(
            check_sticky(&Caller::user(1001, 1001), &tmp, &theirs),
            Ok(())
        );
        assert_eq!(check_sticky(&Caller::root(), &tmp, &theirs), Ok(()));
    }

    #[test]
    fn new_modes_and_names() {
        let c = Caller::user(1000, 1000);
        assert_eq!(
            new_mode(&c, mode::S_IFREG, 0o2777, 0o022, 50),
            mode::S_IFREG | 0o755
        );
        assert_eq!(
            new_mode(&c, mode::S_IFDIR, 0o2777, 0o022, 50),
            mode::S_IFDIR | 0o2755
        );
        assert_eq!(check_new_name(b".."), Err(Errno::EEXIST));
        assert_eq!(check_name(&[b'a'; 256]), Err(Errno::ENAMETOOLONG));
        assert_eq!(check_name(b"a/b"), Err(Errno::EINVAL));
        assert_eq!(check_name(&[b'a'; 255]), Ok(()));
    }
}
