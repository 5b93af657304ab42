//! Numeric tar header fields and PAX numbers, read the way Go's archive/tar
//! reads them: the Go tools that build and unpack most images (umoci, Podman,
//! containerd, BuildKit) accept exactly these values, so an image they accept
//! must not be refused here.

/// A numeric header field (mode, uid, gid, size, mtime, devmajor, devminor)
/// as Go's archive/tar `parser.parseNumeric` reads it (reader.go):
///
/// - the high bit of the first byte set: base-256, a big-endian two's
///   complement number once that bit is dropped, so a set second-highest bit
///   makes it negative (GNU tar writes dates before 1970 this way in
///   `--format=gnu`; see the GNU tar manual, "Basic Tar Format");
/// - otherwise octal text (`parseOctal`): leading and trailing spaces and NULs
///   trimmed, the text ending at the next NUL; a field with nothing left, all
///   NUL as some writers leave unused fields, is 0.
///
/// Errors are the values Go refuses: a base-256 number beyond 64 bits, or
/// octal text that is not octal digits.
pub(super) fn header_number(field: &[u8]) -> Result<i64, String> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => base256(field),
        _ => octal(field),
    }
}

fn base256(field: &[u8]) -> Result<i64, String> {
    // -a-1 == !a: inverting a negative number's bytes gives its magnitude
    // less one, read as unsigned like a positive number.
    let invert: u8 = if field[0] & 0x40 != 0 { 0xff } else { 0 };
    let mut value: u64 = 0;
    for (i, &byte) in field.iter().enumerate() {
        let byte = if i == 0 {
            (byte ^ invert) & 0x7f
        } else {
            byte ^ invert
        };
        if value >> 56 != 0 {
            return Err("base-256 number overflows 64 bits".into());
        }
        value = value << 8 | u64::from(byte);
    }
    let value = i64::try_from(value).map_err(|_| "base-256 number overflows 64 bits")?;
    Ok(if invert == 0xff { !value } else { value })
}

fn octal(field: &[u8]) -> Result<i64, String> {
    let padding = |b: &u8| matches!(b, b' ' | 0);
    let start = field
        .iter()
        .position(|b| !padding(b))
        .unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !padding(b))
        .map_or(start, |i| i + 1);
    let text = &field[start..end];
    // Go's parseString: a C string ends at its first NUL.
    let text = text.split(|&b| b == 0).next().unwrap_or_default();
    if text.is_empty() {
        return Ok(0);
    }
    let not_octal = || format!("{:?} is not an octal number", String::from_utf8_lossy(text));
    if !text.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(not_octal());
    }
    let digits = std::str::from_utf8(text).map_err(|_| not_octal())?;
    let value = u64::from_str_radix(digits, 8).map_err(|_| not_octal())?;
    // Go converts with int64(x): 12 octal digits, the widest field, fit.
    i64::try_from(value).map_err(|_| not_octal())
}

/// A PAX decimal integer record (`uid`, `gid`, `size`) as Go's `mergePAX`
/// parses it, with `strconv.ParseInt(v, 10, 64)`: an optional sign and
/// decimal digits. An empty value means "keep the header's value"
/// (`None`), as Go does and as POSIX pax says of an empty record.
pub(super) fn pax_integer(value: &str) -> Result<Option<i64>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let unsigned = value.strip_prefix(['+', '-']).unwrap_or(value);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{value:?} is not a decimal number"));
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("{value:?} overflows 64 bits"))
}

/// A header or PAX id (uid, gid) or device number in the `u32` Linux keeps.
/// Go's reader takes any `int`; a value Linux cannot store would fail at
/// `lchown`/`mknod` there, so it is refused here, naming the value.
pub(super) fn to_u32(value: i64) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("{value} out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields_as_go_reads_them() {
        assert_eq!(header_number(b"0000644\0"), Ok(0o644));
        assert_eq!(header_number(b"    644 "), Ok(0o644));
        assert_eq!(header_number(b"644\0\0\0\0\0"), Ok(0o644));
        // Leading NULs are padding too, and the text ends at a NUL.
        assert_eq!(header_number(b"\x00\x00\x00644\x00"), Ok(0o644));
        assert_eq!(header_number(b" 12\0 34 "), Ok(0o12));
        // Fields left unused: all NUL, all spaces, or empty.
        assert_eq!(header_number(&[0; 8]), Ok(0));
        assert_eq!(header_number(b"        "), Ok(0));
        assert_eq!(header_number(b""), Ok(0));
        // The widest field: 12 digits, no terminator.
        assert_eq!(header_number(b"777777777777"), Ok(0o777777777777));
        for bad in [
            &b"0000648\0"[..],
            b"+644\0",
            b"-644\0",
            b"0x1f\0",
            b"64 4\0",
        ] {
            assert!(header_number(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base256_fields_positive_and_negative() {
        let field = |bytes: &[u8]| header_number(bytes);
        // 8-byte uid 3000000, as GNU tar writes ids above 0o7777777.
        assert_eq!(field(&[0x80, 0, 0, 0, 0, 0x2d, 0xc6, 0xc0]), Ok(3_000_000));
        // 12-byte mtime -18489600 (1969-06-01), as GNU tar writes it.
        let mut mtime = [0xffu8; 12];
        mtime[8..].copy_from_slice(&(-18_489_600i32).to_be_bytes());
        assert_eq!(field(&mtime), Ok(-18_489_600));
        assert_eq!(field(&[0xff; 12]), Ok(-1));
        assert_eq!(field(&[0x80; 1]), Ok(0));
        // i64::MAX and i64::MIN in 12 bytes; one more bit overflows.
        let mut max = [0u8; 12];
        max[0] = 0x80;
        max[4..].copy_from_slice(&i64::MAX.to_be_bytes());
        assert_eq!(field(&max), Ok(i64::MAX));
        let mut min = [0xffu8; 12];
        min[4..].copy_from_slice(&i64::MIN.to_be_bytes());
        assert_eq!(field(&min), Ok(i64::MIN));
        let mut over = max;
        over[3] = 1;
        assert!(field(&over).is_err());
        max[4] = 0x80;
        assert!(field(&max).is_err());
    }

    #[test]
    fn pax_integers_and_ids() {
        assert_eq!(pax_integer("3000000"), Ok(Some(3_000_000)));
        assert_eq!(pax_integer("+7"), Ok(Some(7)));
        assert_eq!(pax_integer("-1"), Ok(Some(-1)));
        assert_eq!(pax_integer(""), Ok(None));
        for bad in ["x", "1.5", " 1", "+", "99999999999999999999"] {
            assert!(pax_integer(bad).is_err(), "{bad:?}");
        }
        assert_eq!(to_u32(4_294_967_295), Ok(u32::MAX));
        assert!(to_u32(4_294_967_296).is_err());
        assert!(to_u32(-1).is_err());
    }
}
