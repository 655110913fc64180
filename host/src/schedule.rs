//! Schedules: when a task fires, in the district's time zone.
//!
//! A schedule is written as a short phrase (`daily at 07:00`, `weekly on
//! mon,wed,fri at 06:30`, `monthly on last at 18:00`, `every 15 minutes`,
//! `cron 0 7 * * Mon-Fri`) and evaluated in the task's IANA time zone.
//!
//! Daylight-saving rule: a local time that does not exist (it falls in the
//! spring-forward gap) fires at the next valid instant, the end of the gap;
//! a local time that happens twice (the fall-back hour) fires once, at its
//! first occurrence. A monthly day past the month's end (31 in April) fires
//! on the month's last day; `last` (EOM) is always the last day.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Timelike, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How far past the last candidate the search for a fire time goes before
/// it gives up (a cron expression that never matches, a pause that never
/// ends).
const MAX_CANDIDATES: usize = 200_000;

/// A schedule phrase that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "schedule `{input}`: {message}. Examples: `once 2026-12-01 08:00`, `every 15 minutes`, `hourly at :30`, `daily at 07:00`, `weekly on mon,wed,fri at 06:30`, `monthly on 15 at 22:00`, `monthly on last at 18:00`, `cron 0 7 * * Mon-Fri`"
)]
pub struct ParseError {
    /// What was given.
    pub input: String,
    /// What is wrong.
    pub message: String,
}

/// A day of the month for monthly schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonthDay {
    /// A day number, 1 to 31 (clamped to the month's last day).
    Day(u32),
    /// The last day of the month (EOM).
    Last,
}

/// When a task fires, before time zone, start, end and pauses apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Once, at a local date and time.
    Once(NaiveDateTime),
    /// Every N minutes from the task's start.
    EveryMinutes(u32),
    /// Every hour at this minute.
    Hourly(u32),
    /// Every day at this time.
    Daily(NaiveTime),
    /// On these days of the week at this time.
    Weekly(Vec<Weekday>, NaiveTime),
    /// On this day of every month at this time.
    Monthly(MonthDay, NaiveTime),
    /// A cron expression (5 fields, or 6-7 with seconds and year).
    Cron(Box<cron::Schedule>, String),
}

fn parse_time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M").ok()
}

fn parse_weekday(s: &str) -> Option<Weekday> {
    Some(match s.get(..3)?.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

impl FromStr for Schedule {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |message: &str| ParseError { input: input.to_string(), message: message.to_string() };
        let words: Vec<&str> = input.split_whitespace().collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        let at_time = |rest: &[&str]| -> Result<NaiveTime, ParseError> {
            match rest {
                ["at", t] => parse_time(t).ok_or_else(|| err(&format!("`{t}` is not a time; write HH:MM, 24-hour"))),
                _ => Err(err("expected `at HH:MM` at the end")),
            }
        };
        match lower.as_slice() {
            ["once", date, time] => {
                let at = NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M")
                    .map_err(|_| err("expected `once YYYY-MM-DD HH:MM`"))?;
                in_range(at, &format!("{date} {time}")).map_err(|m| err(&m))?;
                Ok(Schedule::Once(at))
            }
            ["every", n, unit] if ["minute", "minutes", "min", "mins"].contains(unit) => {
                let n: u32 = n.parse().map_err(|_| err(&format!("`{n}` is not a whole number of minutes")))?;
                if !(1..=1440).contains(&n) {
                    return Err(err("every N minutes takes N from 1 to 1440"));
                }
                Ok(Schedule::EveryMinutes(n))
            }
            ["hourly", "at", m] => {
                let m: u32 = m
                    .trim_start_matches(':')
                    .parse()
                    .map_err(|_| err(&format!("`{m}` is not a minute; write `hourly at :MM`")))?;
                if m > 59 {
                    return Err(err("the minute must be 0 to 59"));
                }
                Ok(Schedule::Hourly(m))
            }
            ["daily", rest @ ..] => Ok(Schedule::Daily(at_time(rest)?)),
            ["weekly", "on", days, rest @ ..] => {
                let mut list = Vec::new();
                for d in days.split(',').filter(|d| !d.is_empty()) {
                    let day = parse_weekday(d)
                        .ok_or_else(|| err(&format!("`{d}` is not a day; use mon, tue, wed, thu, fri, sat, sun")))?;
                    if !list.contains(&day) {
                        list.push(day);
                    }
                }
                if list.is_empty() {
                    return Err(err("name at least one day"));
                }
                list.sort_by_key(|d| d.num_days_from_monday());
                Ok(Schedule::Weekly(list, at_time(rest)?))
            }
            ["monthly", "on", day, rest @ ..] => {
                let day = match *day {
                    "last" | "eom" => MonthDay::Last,
                    d => {
                        let n: u32 = d
                            .parse()
                            .map_err(|_| err(&format!("`{d}` is not a day of the month; use 1 to 31 or `last`")))?;
                        if !(1..=31).contains(&n) {
                            return Err(err("the day of the month must be 1 to 31, or `last`"));
                        }
                        MonthDay::Day(n)
                    }
                };
                Ok(Schedule::Monthly(day, at_time(rest)?))
            }
            ["cron", ..] => {
                let expr = words[1..].join(" ");
                // Admins write the classic five fields; the cron crate wants seconds first.
                let full = if words.len() - 1 == 5 { format!("0 {expr}") } else { expr.clone() };
                let fields: Vec<&str> = full.split_whitespace().collect();
                if let Some(problem) = cron_range_problem(&fields) {
                    return Err(err(&format!("invalid cron expression: {problem}")));
                }
                let parsed = cron::Schedule::from_str(&full)
                    .map_err(|e| err(&format!("invalid cron expression: {}", one_line(&e.to_string()))))?;
                Ok(Schedule::Cron(Box::new(parsed), expr))
            }
            [] => Err(err("the schedule is empty")),
            _ => Err(err("not a schedule this host understands")),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Once(at) => write!(f, "once {}", at.format("%Y-%m-%d %H:%M")),
            Schedule::EveryMinutes(n) => write!(f, "every {n} minutes"),
            Schedule::Hourly(m) => write!(f, "hourly at :{m:02}"),
            Schedule::Daily(t) => write!(f, "daily at {}", t.format("%H:%M")),
            Schedule::Weekly(days, t) => {
                let days: Vec<String> = days.iter().map(|d| d.to_string().to_lowercase()).collect();
                write!(f, "weekly on {} at {}", days.join(","), t.format("%H:%M"))
            }
            Schedule::Monthly(MonthDay::Day(d), t) => {
                write!(f, "monthly on {d} at {}", t.format("%H:%M"))
            }
            Schedule::Monthly(MonthDay::Last, t) => {
                write!(f, "monthly on last at {}", t.format("%H:%M"))
            }
            Schedule::Cron(_, expr) => write!(f, "cron {expr}"),
        }
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A date range (inclusive, local dates) when a task does not fire, such as
/// a school break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pause {
    /// The first paused day.
    pub from: NaiveDate,
    /// The last paused day.
    pub to: NaiveDate,
}

/// A schedule with its zone, start, optional end and pauses: everything
/// that decides the fire times.
#[derive(Debug, Clone)]
pub struct Timing<'a> {
    /// The schedule.
    pub schedule: &'a Schedule,
    /// The task's time zone.
    pub tz: Tz,
    /// No fire before this instant.
    pub start: DateTime<Utc>,
    /// No fire after this instant.
    pub end: Option<DateTime<Utc>>,
    /// Local date ranges without fires.
    pub pauses: &'a [Pause],
}

/// Resolves a local time to an instant by the module's DST rule.
pub fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: the next valid instant is the first local minute
            // that exists after it (gaps are whole minutes in every zone).
            let mut probe = local.with_second(0).unwrap_or(local);
            for _ in 0..(48 * 60) {
                probe += Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let next =
        if month == 12 { NaiveDate::from_ymd_opt(year + 1, 1, 1) } else { NaiveDate::from_ymd_opt(year, month + 1, 1) };
    next.and_then(|n| n.pred_opt()).map(|d| d.day()).unwrap_or(28)
}

impl Schedule {
    /// Local candidate times strictly after `from`, in order.
    fn candidates(&self, from: NaiveDateTime) -> Box<dyn Iterator<Item = NaiveDateTime> + '_> {
        let day0 = from.date();
        let days = move || (0..).map_while(move |i| day0.checked_add_signed(Duration::days(i)));
        match self {
            Schedule::Once(at) => Box::new(std::iter::once(*at).filter(move |t| *t > from)),
            // Anchored at the task's start, in absolute time: see `next_after`.
            Schedule::EveryMinutes(_) => Box::new(std::iter::empty()),
            Schedule::Hourly(m) => {
                let hour0 = from.date().and_hms_opt(from.hour(), 0, 0).unwrap_or(from);
                let m = *m as i64;
                Box::new(
                    (0..).map(move |h| hour0 + Duration::hours(h) + Duration::minutes(m)).filter(move |t| *t > from),
                )
            }
            Schedule::Daily(time) => Box::new(days().map(move |d| d.and_time(*time)).filter(move |t| *t > from)),
            Schedule::Weekly(list, time) => Box::new(
                days()
                    .filter(move |d| list.contains(&d.weekday()))
                    .map(move |d| d.and_time(*time))
                    .filter(move |t| *t > from),
            ),
            Schedule::Monthly(day, time) => {
                let (y0, m0) = (from.year(), from.month0() as i32);
                Box::new(
                    (0..)
                        .filter_map(move |k| {
                            let months = y0 * 12 + m0 + k;
                            let (year, month) = (months.div_euclid(12), months.rem_euclid(12) as u32 + 1);
                            let last = days_in_month(year, month);
                            let d = match day {
                                MonthDay::Day(d) => (*d).min(last),
                                MonthDay::Last => last,
                            };
                            NaiveDate::from_ymd_opt(year, month, d).map(|date| date.and_time(*time))
                        })
                        .filter(move |t| *t > from),
                )
            }
            Schedule::Cron(expr, _) => {
                // Evaluate on wall-clock time (as if UTC), then resolve each
                // candidate by the same DST rule as every other schedule.
                let start = Utc.from_utc_datetime(&from);
                Box::new(expr.after_owned(start).map(|t| t.naive_utc()))
            }
        }
    }
}

impl Timing<'_> {
    fn paused(&self, instant: DateTime<Utc>) -> bool {
        let day = instant.with_timezone(&self.tz).date_naive();
        self.pauses.iter().any(|p| p.from <= day && day <= p.to)
    }

    /// The first fire time strictly after `after`, or none when the
    /// schedule has no more (a past `once`, an end date reached).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Schedule::EveryMinutes(n) = self.schedule {
            let step = Duration::minutes(i64::from(*n));
            // Checked: a next fire must never come out in the past.
            let mut t = if after < self.start {
                self.start
            } else {
                let k = (after - self.start).num_seconds() / step.num_seconds() + 1;
                let offset = k.checked_mul(step.num_seconds()).and_then(Duration::try_seconds)?;
                self.start.checked_add_signed(offset)?
            };
            for _ in 0..MAX_CANDIDATES {
                if self.end.is_some_and(|end| t > end) {
                    return None;
                }
                if !self.paused(t) {
                    return Some(t);
                }
                t = t.checked_add_signed(step)?;
            }
            return None;
        }
        // Start a little before `after` in local time: a candidate in a
        // DST gap resolves later than its wall-clock time.
        let from =
            after.max(self.start - Duration::seconds(1)).with_timezone(&self.tz).naive_local() - Duration::hours(3);
        for local in self.schedule.candidates(from).take(MAX_CANDIDATES) {
            let t = resolve(self.tz, local);
            if t <= after || t < self.start {
                continue;
            }
            if self.end.is_some_and(|end| t > end) {
                return None;
            }
            if !self.paused(t) {
                return Some(t);
            }
        }
        None
    }

    /// The next `count` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut t = after;
        while out.len() < count {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

/// The cron crate's own range messages are off by one ("Hours must be
/// less than 23" for 24) and span three lines with a caret; the ranges of
/// the numeric fields are checked here first, in the admin's terms.
/// `fields` has seconds first, as the cron crate reads them.
fn cron_range_problem(fields: &[&str]) -> Option<String> {
    const RANGES: [(&str, u32, u32); 5] =
        [("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day of the month", 1, 31), ("month", 1, 12)];
    for (field, (name, low, high)) in fields.iter().zip(RANGES) {
        // Numbers in lists, ranges and steps; a step (after `/`) is a count, not a value.
        for part in field.split(',') {
            let values = part.split('/').next().unwrap_or("");
            for value in values.split('-') {
                if let Ok(n) = value.parse::<u32>()
                    && !(low..=high).contains(&n)
                {
                    return Some(format!("{name} {n} is out of range; write {low} to {high}"));
                }
            }
        }
    }
    None
}

/// An error message on one line: the lines joined, a caret line dropped.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses an IANA time zone name, with a message that says what to write.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone; write one like America/Chicago or Europe/Paris"))
}

/// Parses a local date-time (`YYYY-MM-DD HH:MM`, or RFC 3339 with offset)
/// in `tz`.
pub fn parse_local(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let parsed = if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        Some(t.with_timezone(&Utc))
    } else if let Some(local) = ["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    {
        in_range(local, text)?;
        Some(resolve(tz, local))
    } else {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(|date| resolve(tz, date.and_time(NaiveTime::MIN)))
    };
    let t = parsed.ok_or_else(|| {
        format!("`{text}` is not a date and time; write YYYY-MM-DD HH:MM (in the task's zone) or RFC 3339")
    })?;
    in_range(t.naive_utc(), text)?;
    Ok(t)
}

/// The years a schedule's dates may fall in. Far from chrono's limits, so
/// no fire-time arithmetic can overflow, and wide enough for any district.
pub const YEARS: std::ops::RangeInclusive<i32> = 1970..=2999;

fn in_range(t: NaiveDateTime, text: &str) -> Result<(), String> {
    if YEARS.contains(&t.year()) {
        Ok(())
    } else {
        Err(format!("`{text}` is outside the years {} to {}", YEARS.start(), YEARS.end()))
    }
}

/// Why a schedule preview failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreviewError {
    /// The schedule phrase.
    #[error(transparent)]
    Schedule(#[from] ParseError),
    /// The zone.
    #[error("{0}")]
    Zone(String),
    /// The start.
    #[error("{0}")]
    From(String),
}

/// The next fire times of a schedule, without a task: what `schedule next`
/// prints.
pub fn preview(
    schedule: &str,
    zone: &str,
    from: Option<&str>,
    count: usize,
    now: DateTime<Utc>,
) -> Result<serde_json::Value, PreviewError> {
    let parsed: Schedule = schedule.parse()?;
    let tz = parse_zone(zone).map_err(PreviewError::Zone)?;
    let from = from.map(|f| parse_local(f, tz)).transpose().map_err(PreviewError::From)?.unwrap_or(now);
    let timing = Timing { schedule: &parsed, tz, start: from, end: None, pauses: &[] };
    let fires: Vec<serde_json::Value> =
        explain(&parsed, tz, &timing.upcoming(from - chrono::Duration::seconds(1), count.min(1000)))
            .into_iter()
            .map(|f| serde_json::json!({ "local": f.local, "utc": f.at.to_rfc3339(), "moved": f.moved }))
            .collect();
    Ok(serde_json::json!({ "schedule": parsed.to_string(), "zone": zone, "fires": fires }))
}

/// A fire as people read it, and what daylight saving did to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The instant.
    pub at: DateTime<Utc>,
    /// Its local date and time, zone and offset.
    pub local: String,
    /// How daylight saving moved it, if it did.
    pub moved: Option<String>,
}

/// Explains fires: a time of day that does not exist that day (the clocks
/// go forward) fires late, one that happens twice (they go back) fires
/// once; for schedules without a time of day, a change of offset between
/// two fires is named.
pub fn explain(schedule: &Schedule, tz: Tz, fires: &[DateTime<Utc>]) -> Vec<Fire> {
    let at_time = match schedule {
        Schedule::Daily(t) | Schedule::Weekly(_, t) | Schedule::Monthly(_, t) => Some(*t),
        _ => None,
    };
    let mut previous: Option<chrono::FixedOffset> = None;
    fires
        .iter()
        .map(|at| {
            let local = at.with_timezone(&tz);
            let offset = local.offset().fix();
            let moved = match at_time {
                Some(t) if local.time() != t => Some(format!(
                    "{} does not exist on {} in {tz}: the clocks go forward, so it fires at {}",
                    t.format("%H:%M"),
                    local.date_naive(),
                    local.format("%H:%M")
                )),
                Some(t)
                    if matches!(
                        tz.from_local_datetime(&local.date_naive().and_time(t)),
                        LocalResult::Ambiguous(..)
                    ) =>
                {
                    Some(format!(
                        "{} happens twice on {} in {tz}: the clocks go back, and it fires once, the first time",
                        t.format("%H:%M"),
                        local.date_naive()
                    ))
                }
                None if previous.is_some_and(|p| p != offset) => Some(format!(
                    "the clocks changed since the fire before (UTC{} to UTC{})",
                    previous.map(|p| p.to_string()).unwrap_or_default(),
                    offset
                )),
                _ => None,
            };
            previous = Some(offset);
            Fire { at: *at, local: local.format("%Y-%m-%d %H:%M %Z (%:z)").to_string(), moved }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(schedule: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let schedule: Schedule = schedule.parse().unwrap();
        let tz = parse_zone(tz).unwrap();
        let timing = Timing { schedule: &schedule, tz, start: utc("2000-01-01T00:00:00Z"), end: None, pauses: &[] };
        timing.upcoming(utc(from), n).iter().map(|t| t.with_timezone(&tz).to_rfc3339()).collect()
    }

    #[test]
    fn fires_moved_by_daylight_saving_say_what_moved_them() {
        let tz = parse_zone("America/New_York").unwrap();
        let weekly: Schedule = "weekly on sun at 02:30".parse().unwrap();
        let timing = Timing { schedule: &weekly, tz, start: utc("2000-01-01T00:00:00Z"), end: None, pauses: &[] };
        let fires = explain(&weekly, tz, &timing.upcoming(utc("2026-02-28T12:00:00Z"), 2));
        assert_eq!(fires[0].moved, None);
        let moved = fires[1].moved.as_deref().unwrap();
        assert!(moved.contains("02:30 does not exist on 2026-03-08") && moved.contains("fires at 03:00"), "{moved}");
        let fall: Schedule = "weekly on sun at 01:30".parse().unwrap();
        let timing = Timing { schedule: &fall, tz, start: utc("2000-01-01T00:00:00Z"), end: None, pauses: &[] };
        let fires = explain(&fall, tz, &timing.upcoming(utc("2026-10-26T12:00:00Z"), 2));
        assert!(fires[0].moved.as_deref().unwrap().contains("happens twice on 2026-11-01"));
        assert_eq!(fires[1].moved, None);
    }

    #[test]
    fn a_daily_time_in_the_spring_gap_fires_at_the_end_of_the_gap() {
        assert_eq!(
            fires("daily at 02:30", "America/New_York", "2026-03-06T12:00:00Z", 3),
            ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
        );
    }

    #[test]
    fn a_daily_time_in_the_repeated_fall_hour_fires_once() {
        assert_eq!(
            fires("daily at 01:30", "America/New_York", "2026-10-30T12:00:00Z", 3),
            ["2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
    }

    #[test]
    fn hourly_fires_skip_the_second_pass_through_the_fall_hour() {
        assert_eq!(
            fires("hourly at :30", "America/Chicago", "2026-11-01T05:00:00Z", 3),
            ["2026-11-01T00:30:00-05:00", "2026-11-01T01:30:00-05:00", "2026-11-01T02:30:00-06:00"]
        );
    }

    #[test]
    fn hourly_fires_in_the_spring_gap_collapse_to_its_end() {
        assert_eq!(
            fires("hourly at :30", "America/Chicago", "2026-03-08T07:00:00Z", 3),
            ["2026-03-08T01:30:00-06:00", "2026-03-08T03:00:00-05:00", "2026-03-08T03:30:00-05:00"]
        );
    }

    #[test]
    fn end_of_month_follows_february_and_leap_years() {
        assert_eq!(
            fires("monthly on last at 18:00", "America/Denver", "2027-01-01T12:00:00Z", 3),
            ["2027-01-31T18:00:00-07:00", "2027-02-28T18:00:00-07:00", "2027-03-31T18:00:00-06:00"]
        );
        assert_eq!(
            fires("monthly on eom at 18:00", "America/Denver", "2028-02-01T12:00:00Z", 1),
            ["2028-02-29T18:00:00-07:00"]
        );
    }

    #[test]
    fn a_day_past_the_end_of_a_short_month_fires_on_its_last_day() {
        assert_eq!(
            fires("monthly on 31 at 09:00", "UTC", "2026-03-31T10:00:00Z", 3),
            ["2026-04-30T09:00:00+00:00", "2026-05-31T09:00:00+00:00", "2026-06-30T09:00:00+00:00"]
        );
    }

    #[test]
    fn weekly_fires_on_the_named_days() {
        assert_eq!(
            fires("weekly on fri,mon at 07:15", "Europe/Paris", "2026-11-23T12:00:00Z", 3),
            ["2026-11-27T07:15:00+01:00", "2026-11-30T07:15:00+01:00", "2026-12-04T07:15:00+01:00"]
        );
    }

    #[test]
    fn five_field_cron_is_read_with_minutes_first() {
        assert_eq!(
            fires("cron 0 7 * * Mon-Fri", "America/New_York", "2026-11-20T13:00:00Z", 2),
            ["2026-11-23T07:00:00-05:00", "2026-11-24T07:00:00-05:00"]
        );
    }

    #[test]
    fn every_n_minutes_is_anchored_at_the_start_and_honours_the_end() {
        let schedule: Schedule = "every 15 minutes".parse().unwrap();
        let timing = Timing {
            schedule: &schedule,
            tz: Tz::UTC,
            start: utc("2026-01-01T08:05:00Z"),
            end: Some(utc("2026-01-01T08:40:00Z")),
            pauses: &[],
        };
        let got: Vec<String> = timing.upcoming(utc("2026-01-01T08:06:00Z"), 5).iter().map(|t| t.to_rfc3339()).collect();
        assert_eq!(got, ["2026-01-01T08:20:00+00:00", "2026-01-01T08:35:00+00:00"]);
    }

    #[test]
    fn pause_windows_skip_whole_local_days() {
        let schedule: Schedule = "daily at 07:00".parse().unwrap();
        let pauses = [Pause { from: "2026-12-21".parse().unwrap(), to: "2027-01-01".parse().unwrap() }];
        let tz = parse_zone("America/Los_Angeles").unwrap();
        let timing = Timing { schedule: &schedule, tz, start: utc("2026-01-01T00:00:00Z"), end: None, pauses: &pauses };
        let got = timing.upcoming(utc("2026-12-20T00:00:00Z"), 2);
        let got: Vec<String> = got.iter().map(|t| t.with_timezone(&tz).to_rfc3339()).collect();
        assert_eq!(got, ["2026-12-20T07:00:00-08:00", "2027-01-02T07:00:00-08:00"]);
    }

    #[test]
    fn once_fires_once() {
        assert_eq!(fires("once 2026-12-01 08:00", "UTC", "2026-11-01T00:00:00Z", 3), ["2026-12-01T08:00:00+00:00"]);
        assert!(fires("once 2026-12-01 08:00", "UTC", "2026-12-02T00:00:00Z", 3).is_empty());
    }

    #[test]
    fn phrases_round_trip_and_bad_ones_say_what_to_write() {
        for s in [
            "daily at 07:00",
            "weekly on mon,wed,fri at 06:30",
            "monthly on last at 18:00",
            "every 5 minutes",
            "hourly at :05",
            "cron 0 7 * * Mon-Fri",
        ] {
            assert_eq!(s.parse::<Schedule>().unwrap().to_string(), s);
        }
        let e = "daily at 25:00".parse::<Schedule>().unwrap_err().to_string();
        assert!(e.starts_with("schedule `daily at 25:00`: `25:00` is not a time; write HH:MM, 24-hour."), "{e}");
        let e = "cron 99 * * * *".parse::<Schedule>().unwrap_err().to_string();
        assert!(e.contains("invalid cron expression: minute 99 is out of range; write 0 to 59"), "{e}");
        let e = "cron 0 24 * * *".parse::<Schedule>().unwrap_err().to_string();
        assert!(e.contains("invalid cron expression: hour 24 is out of range; write 0 to 23"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = "cron 0 7 * * Funday".parse::<Schedule>().unwrap_err().to_string();
        assert!(e.contains("invalid cron expression") && !e.contains('\n'), "one line: {e}");
        assert!(parse_zone("Mars/Olympus").unwrap_err().contains("not an IANA time zone"));
    }
}
