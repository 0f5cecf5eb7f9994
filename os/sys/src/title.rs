//! Process names that say what runs: `txipc kv@default g3` instead of `txipc __zygote`.
//!
//! Two names are visible to `ps`, `top` and `pstree`:
//! - the command name (`/proc/PID/comm`, 15 bytes, `ps -e`, `top`): set with `PR_SET_NAME`;
//! - the command line (`/proc/PID/cmdline`, `ps aux`, `ps -ef`, `htop`): the bytes of the
//!   argument strings the process was started with, which Linux reads from the process's own
//!   memory between `arg_start` and `arg_end`. Rewriting them in place (what `setproctitle`
//!   does) changes what `ps` shows; a title longer than the original arguments is cut.
//!
//! The zygote calls this once it knows its server, and each forked standby and incarnation
//! calls it again with its own role, so every process of a server is named by its server,
//! system and role.

use std::io;

/// The argument area `[arg_start, arg_end)` of this process, from `/proc/self/stat` (fields 48
/// and 49), checked against `/proc/self/cmdline` (which Linux reads from that same area).
fn arg_area() -> io::Result<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat");
    // Fields after the parenthesised command name start at field 3.
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let field = |n: usize| -> io::Result<usize> {
        fields
            .get(n - 3)
            .and_then(|f| f.trim().parse().ok())
            .ok_or_else(bad)
    };
    let (start, end) = (field(48)?, field(49)?);
    let cmdline = std::fs::read("/proc/self/cmdline")?;
    // The area holds the arguments, each NUL-terminated; cmdline is exactly those bytes.
    if start == 0 || end <= start || end - start != cmdline.len() || cmdline.last() != Some(&0) {
        return Err(bad());
    }
    Ok((start, end))
}

/// Names this process: `comm` (cut to 15 bytes) and the command line `title` (cut to the
/// length of the original arguments). Call it only while this process has one thread (the
/// zygote and a freshly forked child do): no other thread may be reading the arguments.
pub fn set(comm: &str, title: &str) -> io::Result<()> {
    let mut c: Vec<u8> = comm.bytes().filter(|&b| b != 0).take(15).collect();
    c.push(0);
    let c = std::ffi::CStr::from_bytes_with_nul(&c).expect("one NUL, at the end");
    rustix::thread::set_name(c)?;
    let (start, end) = arg_area()?;
    let len = end - start;
    let mut bytes: Vec<u8> = title.bytes().filter(|&b| b != 0).take(len - 1).collect();
    bytes.resize(len, 0);
    // SAFETY: `[start, end)` is this process's argument area as the kernel reports it (checked
    // against /proc/self/cmdline, which the kernel reads from the same range): memory the
    // kernel placed on the initial stack at exec, mapped readable and writable for the life of
    // the process, and owned by no Rust object. Only `std::env::args` reads it (through the
    // saved `argv` pointers, copying the strings); the caller guarantees no other thread runs,
    // so no read races this write. Writing `len` bytes starting at `start` stays inside the
    // area, and every argument keeps a terminating NUL (the last byte is 0), so later readers
    // of `argv` still see NUL-terminated strings (shorter ones, or empty).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), start as *mut u8, len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn arg_area_matches_cmdline() {
        let (start, end) = super::arg_area().unwrap();
        assert_eq!(
            end - start,
            std::fs::read("/proc/self/cmdline").unwrap().len()
        );
    }
}
