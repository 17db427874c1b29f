//! Sprig's date functions over Go's `time` semantics: layouts written with Go's reference time
//! (`2006-01-02 15:04:05`), `time.ParseDuration`, `Duration.String`, and `time.Time`'s
//! methods. `now` is the render time from the render's [`Env`](crate::template::Env); the
//! agent's `Local` zone is UTC.

use chrono::{Datelike, Offset, TimeZone, Timelike};

use super::{i, s, want, Ctx, Func, F};
use crate::template::value::{Time, Value};

pub const FUNCS: &[(&str, Func)] = &[
    ("now", now),
    ("date", date),
    ("dateInZone", date_in_zone),
    ("date_in_zone", date_in_zone),
    ("htmlDate", html_date),
    ("htmlDateInZone", html_date_in_zone),
    ("dateModify", date_modify),
    ("date_modify", date_modify),
    ("ago", ago),
    ("toDate", to_date),
    ("unixEpoch", unix_epoch),
];

const NS: i128 = 1_000_000_000;

/// `time.Time.String()`.
pub fn time_string(t: &Time) -> String {
    format_layout(t, "2006-01-02 15:04:05.999999999 -0700 MST")
}

/// `time.Time`'s JSON form (RFC 3339 with nanoseconds).
pub fn time_json(t: &Time) -> String {
    format_layout(t, "2006-01-02T15:04:05.999999999Z07:00")
}

fn utc(ns: i128) -> Time {
    Time {
        ns,
        offset: 0,
        zone: "UTC".into(),
    }
}

/// `time.LoadLocation(zone)` then `t.In(loc)`; an unknown zone is UTC (as Sprig falls back).
fn in_zone(ns: i128, zone: &str) -> Time {
    match zone {
        "" | "UTC" | "Local" => utc(ns),
        name => match name.parse::<chrono_tz::Tz>() {
            Ok(tz) => {
                let secs = ns.div_euclid(NS);
                let Ok(secs) = i64::try_from(secs) else {
                    return utc(ns);
                };
                let Some(dt) = chrono::DateTime::from_timestamp(secs, 0) else {
                    return utc(ns);
                };
                let off = tz.offset_from_utc_datetime(&dt.naive_utc());
                Time {
                    ns,
                    offset: off.fix().local_minus_utc(),
                    zone: chrono_tz::OffsetName::abbreviation(&off)
                        .unwrap_or("")
                        .to_string(),
                }
            }
            Err(_) => utc(ns),
        },
    }
}

/// The civil date and time of `t` in its own zone.
fn civil(t: &Time) -> Option<chrono::NaiveDateTime> {
    let local = t.ns + i128::from(t.offset) * NS;
    let secs = i64::try_from(local.div_euclid(NS)).ok()?;
    let nsec = local.rem_euclid(NS) as u32;
    chrono::DateTime::from_timestamp(secs, nsec).map(|d| d.naive_utc())
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Std {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    PM,
    Pm,
    Tz,
    Iso8601Tz,
    Iso8601SecondsTz,
    Iso8601ShortTz,
    Iso8601ColonTz,
    Iso8601ColonSecondsTz,
    NumTz,
    NumSecondsTz,
    NumShortTz,
    NumColonTz,
    NumColonSecondsTz,
    /// Fractional seconds: digit count, trailing zeros trimmed (`.999`), separator.
    Frac(usize, bool, u8),
}

/// Go's `nextStdChunk`: the literal prefix, the element and the rest of the layout.
fn next_std(layout: &[u8]) -> (&[u8], Option<Std>, &[u8]) {
    let starts = |i: usize, p: &str| layout[i..].starts_with(p.as_bytes());
    for i in 0..layout.len() {
        let (std, len) = match layout[i] {
            b'J' if starts(i, "January") => (Std::LongMonth, 7),
            b'J' if starts(i, "Jan") => (Std::Month, 3),
            b'M' if starts(i, "Monday") => (Std::LongWeekDay, 6),
            b'M' if starts(i, "Mon") => (Std::WeekDay, 3),
            b'M' if starts(i, "MST") => (Std::Tz, 3),
            b'0' if i + 1 < layout.len() && (b'1'..=b'6').contains(&layout[i + 1]) => (
                [
                    Std::ZeroMonth,
                    Std::ZeroDay,
                    Std::ZeroHour12,
                    Std::ZeroMinute,
                    Std::ZeroSecond,
                    Std::Year,
                ][(layout[i + 1] - b'1') as usize],
                2,
            ),
            b'0' if starts(i, "002") => (Std::ZeroYearDay, 3),
            b'1' if starts(i, "15") => (Std::Hour, 2),
            b'1' => (Std::NumMonth, 1),
            b'2' if starts(i, "2006") => (Std::LongYear, 4),
            b'2' => (Std::Day, 1),
            b'_' if starts(i, "_2") => {
                if starts(i, "_2006") {
                    return (&layout[..i + 1], Some(Std::LongYear), &layout[i + 5..]);
                }
                (Std::UnderDay, 2)
            }
            b'_' if starts(i, "__2") => (Std::UnderYearDay, 3),
            b'3' => (Std::Hour12, 1),
            b'4' => (Std::Minute, 1),
            b'5' => (Std::Second, 1),
            b'P' if starts(i, "PM") => (Std::PM, 2),
            b'p' if starts(i, "pm") => (Std::Pm, 2),
            b'-' if starts(i, "-070000") => (Std::NumSecondsTz, 7),
            b'-' if starts(i, "-07:00:00") => (Std::NumColonSecondsTz, 9),
            b'-' if starts(i, "-0700") => (Std::NumTz, 5),
            b'-' if starts(i, "-07:00") => (Std::NumColonTz, 6),
            b'-' if starts(i, "-07") => (Std::NumShortTz, 3),
            b'Z' if starts(i, "Z070000") => (Std::Iso8601SecondsTz, 7),
            b'Z' if starts(i, "Z07:00:00") => (Std::Iso8601ColonSecondsTz, 9),
            b'Z' if starts(i, "Z0700") => (Std::Iso8601Tz, 5),
            b'Z' if starts(i, "Z07:00") => (Std::Iso8601ColonTz, 6),
            b'Z' if starts(i, "Z07") => (Std::Iso8601ShortTz, 3),
            c @ (b'.' | b',')
                if i + 1 < layout.len() && (layout[i + 1] == b'0' || layout[i + 1] == b'9') =>
            {
                let ch = layout[i + 1];
                let mut j = i + 1;
                while j < layout.len() && layout[j] == ch {
                    j += 1;
                }
                if j < layout.len() && layout[j].is_ascii_digit() {
                    continue;
                }
                (Std::Frac(j - (i + 1), ch == b'9', c), j - i)
            }
            _ => continue,
        };
        return (&layout[..i], Some(std), &layout[i + len..]);
    }
    (layout, None, &[])
}

fn pad(out: &mut String, n: i64, width: usize) {
    if n < 0 {
        out.push('-');
    }
    out.push_str(&format!("{:0width$}", n.unsigned_abs()));
}

fn push_tz(out: &mut String, offset: i32, std: Std) {
    use Std::*;
    if offset == 0
        && matches!(
            std,
            Iso8601Tz | Iso8601SecondsTz | Iso8601ShortTz | Iso8601ColonTz | Iso8601ColonSecondsTz
        )
    {
        out.push('Z');
        return;
    }
    let zone = offset / 60;
    let abs = offset.unsigned_abs();
    out.push(if zone < 0 { '-' } else { '+' });
    let zone = zone.unsigned_abs();
    out.push_str(&format!("{:02}", zone / 60));
    let colon = matches!(
        std,
        Iso8601ColonTz | NumColonTz | Iso8601ColonSecondsTz | NumColonSecondsTz
    );
    if !matches!(std, NumShortTz | Iso8601ShortTz) {
        if colon {
            out.push(':');
        }
        out.push_str(&format!("{:02}", zone % 60));
    }
    if matches!(
        std,
        Iso8601SecondsTz | NumSecondsTz | NumColonSecondsTz | Iso8601ColonSecondsTz
    ) {
        if colon {
            out.push(':');
        }
        out.push_str(&format!("{:02}", abs % 60));
    }
}

/// `t.Format(layout)`.
pub fn format_layout(t: &Time, layout: &str) -> String {
    let Some(d) = civil(t) else {
        return String::new();
    };
    let mut out = String::new();
    let mut rest = layout.as_bytes();
    while !rest.is_empty() {
        let (prefix, std, tail) = next_std(rest);
        out.push_str(&String::from_utf8_lossy(prefix));
        rest = tail;
        let Some(std) = std else { break };
        let year = i64::from(d.year());
        let hour = d.hour() as i64;
        match std {
            Std::Year => pad(&mut out, year.rem_euclid(100), 2),
            Std::LongYear => pad(&mut out, year, 4),
            Std::Month => out.push_str(&MONTHS[d.month0() as usize][..3]),
            Std::LongMonth => out.push_str(MONTHS[d.month0() as usize]),
            Std::NumMonth => out.push_str(&d.month().to_string()),
            Std::ZeroMonth => pad(&mut out, i64::from(d.month()), 2),
            Std::WeekDay => out.push_str(&DAYS[d.weekday().num_days_from_sunday() as usize][..3]),
            Std::LongWeekDay => out.push_str(DAYS[d.weekday().num_days_from_sunday() as usize]),
            Std::Day => out.push_str(&d.day().to_string()),
            Std::UnderDay => out.push_str(&format!("{:>2}", d.day())),
            Std::ZeroDay => pad(&mut out, i64::from(d.day()), 2),
            Std::UnderYearDay => out.push_str(&format!("{:>3}", d.ordinal())),
            Std::ZeroYearDay => pad(&mut out, i64::from(d.ordinal()), 3),
            Std::Hour => pad(&mut out, hour, 2),
            Std::Hour12 | Std::ZeroHour12 => {
                let h = match hour % 12 {
                    0 => 12,
                    h => h,
                };
                if std == Std::Hour12 {
                    out.push_str(&h.to_string());
                } else {
                    pad(&mut out, h, 2);
                }
            }
            Std::Minute => out.push_str(&d.minute().to_string()),
            Std::ZeroMinute => pad(&mut out, i64::from(d.minute()), 2),
            Std::Second => out.push_str(&d.second().to_string()),
            Std::ZeroSecond => pad(&mut out, i64::from(d.second()), 2),
            Std::PM => out.push_str(if hour >= 12 { "PM" } else { "AM" }),
            Std::Pm => out.push_str(if hour >= 12 { "pm" } else { "am" }),
            Std::Tz => {
                if !t.zone.is_empty() {
                    out.push_str(&t.zone);
                } else {
                    push_tz(&mut out, t.offset - t.offset % 60, Std::NumTz);
                }
            }
            Std::Frac(n, trim, sep) => {
                let digits = format!("{:09}", d.nanosecond() % 1_000_000_000);
                let mut frac = digits[..n.min(9)].to_string();
                if trim {
                    frac = frac.trim_end_matches('0').to_string();
                    if !frac.is_empty() {
                        out.push(sep as char);
                        out.push_str(&frac);
                    }
                } else {
                    out.push(sep as char);
                    out.push_str(&frac);
                    for _ in 9..n {
                        out.push('0');
                    }
                }
            }
            tz => push_tz(&mut out, t.offset, tz),
        }
    }
    out
}

/// Reads up to `max` digits (at least `min`).
fn take_num(v: &mut &[u8], min: usize, max: usize) -> Option<i64> {
    let n = v
        .iter()
        .take(max)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if n < min {
        return None;
    }
    let x = std::str::from_utf8(&v[..n]).ok()?.parse().ok()?;
    *v = &v[n..];
    Some(x)
}

fn take_name(v: &mut &[u8], names: &[&str], len: Option<usize>) -> Option<usize> {
    for (k, n) in names.iter().enumerate() {
        let n = match len {
            Some(l) => &n[..l],
            None => n,
        };
        if v.len() >= n.len() && v[..n.len()].eq_ignore_ascii_case(n.as_bytes()) {
            *v = &v[n.len()..];
            return Some(k);
        }
    }
    None
}

fn take_offset(v: &mut &[u8], std: Std) -> Option<i32> {
    use Std::*;
    if matches!(
        std,
        Iso8601Tz | Iso8601SecondsTz | Iso8601ShortTz | Iso8601ColonTz | Iso8601ColonSecondsTz
    ) && v.first() == Some(&b'Z')
    {
        *v = &v[1..];
        return Some(0);
    }
    let sign = match v.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    *v = &v[1..];
    let colon = matches!(
        std,
        Iso8601ColonTz | NumColonTz | Iso8601ColonSecondsTz | NumColonSecondsTz
    );
    let h = take_num(v, 2, 2)?;
    let mut m = 0;
    let mut sec = 0;
    if !matches!(std, NumShortTz | Iso8601ShortTz) {
        if colon {
            *v = v.strip_prefix(b":")?;
        }
        m = take_num(v, 2, 2)?;
    }
    if matches!(
        std,
        Iso8601SecondsTz | NumSecondsTz | NumColonSecondsTz | Iso8601ColonSecondsTz
    ) {
        if colon {
            *v = v.strip_prefix(b":")?;
        }
        sec = take_num(v, 2, 2)?;
    }
    Some(sign * (h * 3600 + m * 60 + sec) as i32)
}

/// `time.ParseInLocation(layout, value, UTC)`; `None` where Go returns an error.
pub fn parse_layout(layout: &str, value: &str) -> Option<Time> {
    let mut v = value.as_bytes();
    let mut rest = layout.as_bytes();
    let (mut year, mut month, mut day, mut yday) = (1i64, 1i64, 1i64, -1i64);
    let (mut hour, mut min, mut sec, mut nsec) = (0i64, 0i64, 0i64, 0i64);
    let mut pm: Option<bool> = None;
    let mut offset: Option<i32> = None;
    let mut zone = String::new();
    while !rest.is_empty() {
        let (prefix, std, tail) = next_std(rest);
        v = v.strip_prefix(prefix)?;
        rest = tail;
        let Some(std) = std else { break };
        match std {
            Std::Year => {
                let y = take_num(&mut v, 2, 2)?;
                year = if y >= 69 { 1900 + y } else { 2000 + y };
            }
            Std::LongYear => year = take_num(&mut v, 4, 4)?,
            Std::Month => month = take_name(&mut v, &MONTHS, Some(3))? as i64 + 1,
            Std::LongMonth => month = take_name(&mut v, &MONTHS, None)? as i64 + 1,
            Std::NumMonth | Std::ZeroMonth => {
                month = take_num(&mut v, if std == Std::ZeroMonth { 2 } else { 1 }, 2)?;
                if !(1..=12).contains(&month) {
                    return None;
                }
            }
            Std::WeekDay => {
                take_name(&mut v, &DAYS, Some(3))?;
            }
            Std::LongWeekDay => {
                take_name(&mut v, &DAYS, None)?;
            }
            Std::Day | Std::UnderDay | Std::ZeroDay => {
                if std == Std::UnderDay && v.first() == Some(&b' ') {
                    v = &v[1..];
                }
                day = take_num(&mut v, if std == Std::ZeroDay { 2 } else { 1 }, 2)?;
            }
            Std::UnderYearDay | Std::ZeroYearDay => {
                while std == Std::UnderYearDay && v.first() == Some(&b' ') {
                    v = &v[1..];
                }
                yday = take_num(&mut v, if std == Std::ZeroYearDay { 3 } else { 1 }, 3)?;
            }
            Std::Hour => {
                hour = take_num(&mut v, 2, 2)?;
                if hour >= 24 {
                    return None;
                }
            }
            Std::Hour12 | Std::ZeroHour12 => {
                hour = take_num(&mut v, if std == Std::ZeroHour12 { 2 } else { 1 }, 2)?;
                if hour > 12 {
                    return None;
                }
            }
            Std::Minute | Std::ZeroMinute => {
                min = take_num(&mut v, if std == Std::ZeroMinute { 2 } else { 1 }, 2)?;
                if min >= 60 {
                    return None;
                }
            }
            Std::Second | Std::ZeroSecond => {
                sec = take_num(&mut v, if std == Std::ZeroSecond { 2 } else { 1 }, 2)?;
                if sec >= 60 {
                    return None;
                }
                // A fraction the layout does not mention is still accepted.
                if v.len() > 1
                    && (v[0] == b'.' || v[0] == b',')
                    && v[1].is_ascii_digit()
                    && !matches!(next_std(rest).1, Some(Std::Frac(..)))
                {
                    v = &v[1..];
                    let n = v.iter().take_while(|c| c.is_ascii_digit()).count();
                    nsec = frac_ns(&v[..n]);
                    v = &v[n..];
                }
            }
            Std::PM | Std::Pm => {
                let t = v.get(..2)?;
                pm = Some(if t.eq_ignore_ascii_case(b"PM") {
                    true
                } else if t.eq_ignore_ascii_case(b"AM") {
                    false
                } else {
                    return None;
                });
                v = &v[2..];
            }
            Std::Tz => {
                if v.starts_with(b"UTC") {
                    zone = "UTC".into();
                    offset = Some(0);
                    v = &v[3..];
                } else {
                    let n = v.iter().take_while(|c| c.is_ascii_uppercase()).count();
                    if n < 3 {
                        return None;
                    }
                    zone = String::from_utf8_lossy(&v[..n]).into_owned();
                    v = &v[n..];
                }
            }
            Std::Frac(n, trim, _) => {
                if !trim {
                    if v.len() < n + 1 || !(v[0] == b'.' || v[0] == b',') {
                        return None;
                    }
                    nsec = frac_ns(&v[1..n + 1]);
                    if !v[1..n + 1].iter().all(u8::is_ascii_digit) {
                        return None;
                    }
                    v = &v[n + 1..];
                } else if v.len() > 1 && (v[0] == b'.' || v[0] == b',') && v[1].is_ascii_digit() {
                    v = &v[1..];
                    let k = v.iter().take_while(|c| c.is_ascii_digit()).count();
                    nsec = frac_ns(&v[..k]);
                    v = &v[k..];
                }
            }
            tz => offset = Some(take_offset(&mut v, tz)?),
        }
    }
    if !v.is_empty() {
        return None;
    }
    if let Some(pm) = pm {
        if pm && hour < 12 {
            hour += 12;
        } else if !pm && hour == 12 {
            hour = 0;
        }
    }
    let date = if yday >= 0 {
        chrono::NaiveDate::from_yo_opt(i32::try_from(year).ok()?, u32::try_from(yday).ok()?)?
    } else {
        chrono::NaiveDate::from_ymd_opt(
            i32::try_from(year).ok()?,
            u32::try_from(month).ok()?,
            u32::try_from(day).ok()?,
        )?
    };
    let naive = date.and_hms_opt(hour as u32, min as u32, sec as u32)?;
    let off = offset.unwrap_or(0);
    let ns = i128::from(naive.and_utc().timestamp()) * NS + i128::from(nsec) - i128::from(off) * NS;
    if offset == Some(0) && zone.is_empty() {
        zone = "UTC".into();
    }
    if offset.is_none() && zone.is_empty() {
        zone = "UTC".into();
    }
    Some(Time {
        ns,
        offset: off,
        zone: if offset.is_some() && zone.is_empty() {
            String::new()
        } else {
            zone
        },
    })
}

fn frac_ns(digits: &[u8]) -> i64 {
    let mut ns = 0i64;
    for k in 0..9 {
        ns = ns * 10 + digits.get(k).map(|d| i64::from(d - b'0')).unwrap_or(0);
    }
    ns
}

/// Go's zero `time.Time` (what Sprig's `toDate` returns for a value it cannot parse).
fn zero_time() -> Time {
    utc(-62_135_596_800 * NS)
}

/// `time.ParseDuration` in nanoseconds.
pub fn parse_duration(x: &str) -> Option<i128> {
    let (neg, mut v) = match x.as_bytes().first() {
        Some(b'-') => (true, &x[1..]),
        Some(b'+') => (false, &x[1..]),
        _ => (false, x),
    };
    if v == "0" {
        return Some(0);
    }
    if v.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    let mut exact: i128 = 0;
    while !v.is_empty() {
        let n = v
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        let num = &v[..n];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        v = &v[n..];
        let u = v
            .bytes()
            .take_while(|c| !(c.is_ascii_digit() || *c == b'.'))
            .count();
        let unit = &v[..u];
        v = &v[u..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NS,
            "m" => 60 * NS,
            "h" => 3600 * NS,
            _ => return None,
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        let w: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        exact = exact.checked_add(w.checked_mul(scale)?)?;
        if !frac.is_empty() {
            let f: f64 = format!("0.{frac}").parse().ok()?;
            total += f * scale as f64;
        }
    }
    let ns = exact + total as i128;
    if ns > i128::from(i64::MAX) {
        return None;
    }
    Some(if neg { -ns } else { ns })
}

/// `time.Duration.String()`.
pub fn duration_string(d: i128) -> String {
    if d == 0 {
        return "0s".into();
    }
    let neg = d < 0;
    let u = d.unsigned_abs();
    let mut out = String::new();
    if u < NS as u128 {
        let (v, unit) = if u < 1_000 {
            (u as f64, "ns")
        } else if u < 1_000_000 {
            (u as f64 / 1e3, "µs")
        } else {
            (u as f64 / 1e6, "ms")
        };
        out.push_str(&format!(
            "{}{unit}",
            crate::template::value::format_go_float(v)
        ));
    } else {
        let secs = u / NS as u128;
        let frac = u % NS as u128;
        let (h, m, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&sec.to_string());
        if frac > 0 {
            let f = format!("{frac:09}");
            out.push('.');
            out.push_str(f.trim_end_matches('0'));
        }
        out.push('s');
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

/// The instant a Sprig date argument stands for: a time, or Unix seconds; anything else is
/// the render time.
fn instant(v: &Value, ctx: &Ctx) -> i128 {
    match v {
        Value::Time(t) => t.ns,
        Value::Int(secs) => i128::from(*secs) * NS,
        _ => i128::from(ctx.now_ns),
    }
}

fn time_arg(v: &Value) -> Result<&Time, String> {
    match v {
        Value::Time(t) => Ok(t),
        Value::Nil => Err("invalid value; expected time.Time".into()),
        other => Err(format!(
            "wrong type for value; expected time.Time; got {}",
            other.type_name()
        )),
    }
}

fn now(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 0)?;
    Ok(Value::Time(utc(i128::from(ctx.now_ns))))
}

fn date(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Str(format_layout(
        &in_zone(instant(&a[1], ctx), "Local"),
        s(&a[0])?,
    )))
}

fn date_in_zone(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 3)?;
    Ok(Value::Str(format_layout(
        &in_zone(instant(&a[1], ctx), s(&a[2])?),
        s(&a[0])?,
    )))
}

fn html_date(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(format_layout(
        &in_zone(instant(&a[0], ctx), "Local"),
        "2006-01-02",
    )))
}

fn html_date_in_zone(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Str(format_layout(
        &in_zone(instant(&a[0], ctx), s(&a[1])?),
        "2006-01-02",
    )))
}

fn date_modify(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let d = s(&a[0])?;
    let t = time_arg(&a[1])?;
    Ok(Value::Time(match parse_duration(d) {
        Some(ns) => Time {
            ns: t.ns + ns,
            ..t.clone()
        },
        None => t.clone(),
    }))
}

/// `time.Since(t).Round(time.Second).String()`.
fn ago(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 1)?;
    let t = match &a[0] {
        Value::Time(t) => t.ns,
        Value::Int(secs) => i128::from(*secs) * NS,
        _ => i128::from(ctx.now_ns),
    };
    let d = i128::from(ctx.now_ns) - t;
    // Round half away from zero.
    let r = (d.abs() + NS / 2) / NS * NS;
    Ok(Value::Str(duration_string(if d < 0 { -r } else { r })))
}

fn to_date(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Time(
        parse_layout(s(&a[0])?, s(&a[1])?).unwrap_or_else(zero_time),
    ))
}

fn unix_epoch(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(time_arg(&a[0])?.ns.div_euclid(NS).to_string()))
}

/// A method of `time.Time` called from a template (`now.Year`, `(now).Format "2006"`).
pub fn method(t: &Time, name: &str, args: &[Value]) -> Option<F> {
    let d = civil(t);
    let no_args = |v: Value| -> F {
        if args.is_empty() {
            Ok(v)
        } else {
            Err(format!(
                "wrong number of args for {name}: want 0 got {}",
                args.len()
            ))
        }
    };
    let d = match d {
        Some(d) => d,
        None => return Some(Err("time out of range".into())),
    };
    Some(match name {
        "Year" => no_args(Value::Int(i64::from(d.year()))),
        "Month" => no_args(Value::Str(MONTHS[d.month0() as usize].into())),
        "Day" => no_args(Value::Int(i64::from(d.day()))),
        "Hour" => no_args(Value::Int(i64::from(d.hour()))),
        "Minute" => no_args(Value::Int(i64::from(d.minute()))),
        "Second" => no_args(Value::Int(i64::from(d.second()))),
        "Nanosecond" => no_args(Value::Int(i64::from(d.nanosecond() % 1_000_000_000))),
        "YearDay" => no_args(Value::Int(i64::from(d.ordinal()))),
        "Weekday" => no_args(Value::Str(
            DAYS[d.weekday().num_days_from_sunday() as usize].into(),
        )),
        "Unix" => no_args(Value::Int(t.ns.div_euclid(NS) as i64)),
        "UnixNano" => no_args(Value::Int(t.ns as i64)),
        "UTC" | "Local" => no_args(Value::Time(utc(t.ns))),
        "String" => no_args(Value::Str(time_string(t))),
        "IsZero" => no_args(Value::Bool(t.ns == zero_time().ns)),
        "Format" => match args {
            [Value::Str(layout)] => Ok(Value::Str(format_layout(t, layout))),
            _ => Err("wrong number of args for Format: want 1 got other".into()),
        },
        "In" => match args {
            [Value::Str(zone)] => Ok(Value::Time(in_zone(t.ns, zone))),
            _ => Err("wrong arguments for In".into()),
        },
        "Add" => match args {
            [d] => i(d).map(|ns| {
                Value::Time(Time {
                    ns: t.ns + i128::from(ns),
                    ..t.clone()
                })
            }),
            _ => Err("wrong number of args for Add".into()),
        },
        _ => return None,
    })
}
