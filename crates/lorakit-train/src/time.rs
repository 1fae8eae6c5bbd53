//! Wall-clock formatting for file names and metadata (local time where the OS tells us the zone).

use std::time::{SystemTime, UNIX_EPOCH};

use lorakit_lora::metadata::civil_from_unix;

/// Seconds since the Unix epoch, with fractions (sd-scripts' `time.time()`).
pub fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Broken-down local time: (year, month, day, hour, minute, second).
fn local_parts() -> (i64, u32, u32, u32, u32, u32) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    #[cfg(unix)]
    {
        let t: libc::time_t = secs as libc::time_t;
        // SAFETY: localtime_r writes into the zeroed struct we own; both pointers are valid.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        if !unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
            return (
                i64::from(tm.tm_year) + 1900,
                (tm.tm_mon + 1) as u32,
                tm.tm_mday as u32,
                tm.tm_hour as u32,
                tm.tm_min as u32,
                tm.tm_sec as u32,
            );
        }
    }
    civil_from_unix(secs)
}

/// `2026-02-16T08:07:29` (modelspec.date).
pub fn local_iso_timestamp() -> String {
    let (y, mo, d, h, mi, s) = local_parts();
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
}

/// `20260216080729` (run folders and sample file names, as sd-scripts names them).
pub fn compact_timestamp() -> String {
    let (y, mo, d, h, mi, s) = local_parts();
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(1_771_229_249), (2026, 2, 16, 8, 7, 29));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
    }
}
