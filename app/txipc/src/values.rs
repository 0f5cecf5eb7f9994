//! Byte strings on the command line: escaping for display, hex and base64 in and out.
//!
//! Keys and values of kv are arbitrary bytes. Shown to a person, a byte string is printed as is
//! when it is printable UTF-8; otherwise (and always in `scan`, whose lines must stay
//! unambiguous) `\` `\t` `\n` `\r` and every non-printable byte are escaped as `\\` `\t` `\n`
//! `\r` and `\xNN`. An 8-byte value that is not printable text is a counter (`kv incr`) and is
//! shown as its number. `--hex`, `--base64` and `--raw` pick an exact encoding instead.

use base64::Engine as _;

/// How values are written out (and, for hex and base64, read in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Printable text as is, counters as numbers, other bytes escaped.
    Text,
    /// Lower-case hex digits.
    Hex,
    /// Standard base64 with padding.
    Base64,
    /// The exact bytes (output only; input values are always raw bytes unless hex/base64).
    Raw,
}

/// Standard base64 with padding.
pub fn base64_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes standard base64 (padding optional, surrounding whitespace ignored).
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(&s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&s))
        .map_err(|e| format!("not base64: {e}"))
}

/// Lower-case hex.
pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes hex digits (either case, whitespace ignored).
pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(format!(
            "not hex: {} digits (an even number is needed)",
            digits.len()
        ));
    }
    digits
        .chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16).map(|x| x as u8);
            match (d(p[0]), d(p[1])) {
                (Some(a), Some(b)) => Ok(a << 4 | b),
                _ => Err(format!(
                    "not hex: `{}` is not a hex digit pair",
                    String::from_utf8_lossy(p)
                )),
            }
        })
        .collect()
}

/// Whether `b` is UTF-8 without control characters (shown as is).
pub fn printable(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(|s| !s.chars().any(char::is_control))
}

/// The counter an 8-byte non-text value holds.
pub fn as_counter(b: &[u8]) -> Option<i64> {
    if printable(b) {
        return None;
    }
    kv_api::counter_value(b)
}

/// Escapes `\`, tab, newline, carriage return and every byte that is not printable UTF-8.
pub fn escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for x in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{x:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out
}

/// Reverses [`escape`] (also accepts `\0`). Used for keys given with escapes.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'0') => out.push(0),
            Some(b'x') => {
                let h = s.get(i + 2..i + 4).ok_or("`\\x` needs two hex digits")?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| format!("`\\x{h}` is not hex"))?);
                i += 2;
            }
            _ => {
                return Err(format!(
                    "unknown escape at byte {i}: use \\\\ \\t \\n \\r \\0 or \\xNN"
                ));
            }
        }
        i += 2;
    }
    Ok(out)
}

/// A value shown alone (`kv get`): printable text as is, a counter as its number, else escaped.
pub fn show_value(b: &[u8], enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::Raw => b.to_vec(),
        Encoding::Hex => hex_encode(b).into_bytes(),
        Encoding::Base64 => base64_encode(b).into_bytes(),
        Encoding::Text if printable(b) => b.to_vec(),
        Encoding::Text => match as_counter(b) {
            Some(n) => n.to_string().into_bytes(),
            None => escape(b).into_bytes(),
        },
    }
}

/// A value in a line of `scan` output: like [`show_value`], but text is always escaped so that
/// tabs and newlines cannot break the line.
pub fn show_in_line(b: &[u8], enc: Encoding) -> String {
    match enc {
        Encoding::Hex => hex_encode(b),
        Encoding::Base64 | Encoding::Raw => base64_encode(b),
        Encoding::Text => match as_counter(b) {
            Some(n) => n.to_string(),
            None => escape(b),
        },
    }
}

/// Decodes a value given on the command line in `enc`.
pub fn decode_input(b: &[u8], enc: Encoding) -> Result<Vec<u8>, String> {
    let text = || std::str::from_utf8(b).map_err(|_| "not UTF-8".to_string());
    match enc {
        Encoding::Hex => hex_decode(text()?),
        Encoding::Base64 => base64_decode(text()?),
        Encoding::Text | Encoding::Raw => Ok(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_roundtrips_every_byte() {
        let all: Vec<u8> = (0..=255u8).chain("é\t\\n".bytes()).collect();
        let e = escape(&all);
        assert!(!e.contains('\t') && !e.contains('\n'));
        assert_eq!(unescape(&e).unwrap(), all);
        assert_eq!(escape(b"a\tb"), "a\\tb");
    }

    #[test]
    fn encodings() {
        let b = [0u8, 1, 0xfe, 0xff];
        assert_eq!(hex_decode(&hex_encode(&b)).unwrap(), b);
        assert_eq!(base64_decode(&base64_encode(&b)).unwrap(), b);
        assert!(hex_decode("abc").is_err());
        assert!(hex_decode("zz").is_err());
        assert!(base64_decode("***").is_err());
        assert_eq!(show_value(&5i64.to_le_bytes(), Encoding::Text), b"5");
        assert_eq!(show_value(b"12345678", Encoding::Text), b"12345678");
        assert_eq!(show_value(b"a\0", Encoding::Text), b"a\\x00");
    }
}
