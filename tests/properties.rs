//! Properties over generated input. The short pass (proptest's default
//! 256 cases) runs in `xtask/test`; `xtask/fuzz` sets `PROPTEST_CASES` much
//! higher. Each property names what must hold for every input:
//! - any text given as a schedule, zone or date is answered, never a panic;
//! - the next fire is always later than `after`, and within start and end;
//! - a daily time fires at that local time, or, in a spring-forward gap,
//!   at the first local time after the gap;
//! - any text given as `schoolbell.toml` is read or refused with a message;
//! - any text given as a rule compiles or is refused with its line.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use proptest::prelude::*;
use schoolbell::schedule::{Schedule, Timing, parse_zone};

const ZONES: &[&str] =
    &["UTC", "America/New_York", "America/Chicago", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata"];

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 1971 to 2998: inside the years schedules accept.
    (31_536_000i64..32_000_000_000i64).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap())
}

fn phrase() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..1441).prop_map(|n| format!("every {n} minutes")),
        (0u32..60).prop_map(|m| format!("hourly at :{m:02}")),
        (0u32..24, 0u32..60).prop_map(|(h, m)| format!("daily at {h:02}:{m:02}")),
        (0u32..24, 0u32..60).prop_map(|(h, m)| format!("weekly on mon,thu at {h:02}:{m:02}")),
        (1u32..32, 0u32..24).prop_map(|(d, h)| format!("monthly on {d} at {h:02}:30")),
        (0u32..24).prop_map(|h| format!("monthly on last at {h:02}:00")),
        Just("cron 0 7 * * Mon-Fri".to_string()),
    ]
}

proptest! {
    #[test]
    fn any_schedule_text_is_answered_not_panicked(text in "\\PC{0,40}", zone in "\\PC{0,20}", from in "\\PC{0,24}") {
        let _ = text.parse::<Schedule>();
        let _ = schoolbell::schedule::preview(&text, &zone, Some(&from), 5, Utc::now());
        let _ = schoolbell::schedule::preview(&format!("every {text} minutes"), "UTC", None, 3, Utc::now());
    }

    #[test]
    fn the_next_fire_is_later_than_after_and_within_start_and_end(
        phrase in phrase(),
        zone in prop::sample::select(ZONES),
        start in instant(),
        after in instant(),
        span in prop::option::of(1i64..400_000_000),
    ) {
        let schedule: Schedule = phrase.parse().unwrap();
        let tz = parse_zone(zone).unwrap();
        let end = span.map(|s| start + Duration::seconds(s));
        let timing = Timing { schedule: &schedule, tz, start, end, pauses: &[] };
        if let Some(next) = timing.next_after(after) {
            prop_assert!(next > after, "{phrase} in {zone}: {next} is not after {after}");
            prop_assert!(next >= start, "{phrase}: {next} before the start {start}");
            prop_assert!(end.is_none_or(|e| next <= e), "{phrase}: {next} after the end");
        }
    }

    #[test]
    fn a_daily_time_fires_at_that_local_time_or_just_after_a_gap(
        h in 0u32..24, m in 0u32..60, zone in prop::sample::select(ZONES), after in instant(),
    ) {
        let schedule: Schedule = format!("daily at {h:02}:{m:02}").parse().unwrap();
        let tz = parse_zone(zone).unwrap();
        let timing = Timing { schedule: &schedule, tz, start: Utc.timestamp_opt(0, 0).unwrap(), end: None, pauses: &[] };
        let next = timing.next_after(after).unwrap();
        let local = next.with_timezone(&tz);
        let wanted = NaiveTime::from_hms_opt(h, m, 0).unwrap();
        if local.time() != wanted {
            // Only a local time that does not exist that day may move, and
            // then to the end of the gap: the minute before does not exist either.
            let day = local.date_naive();
            prop_assert!(tz.from_local_datetime(&day.and_time(wanted)).earliest().is_none(), "{h:02}:{m:02} in {zone} fired at {local}");
            prop_assert!(local.time() > wanted, "{h:02}:{m:02} in {zone} moved back to {local}");
        }
        prop_assert!(next - after <= Duration::hours(26));
    }

    #[test]
    fn any_config_text_is_read_or_refused_with_a_message(text in "\\PC{0,200}", key in "[a-z_]{1,12}") {
        let dir = tempfile::tempdir().unwrap();
        for body in [text.clone(), format!("[sandbox]\n{key} = {text:?}\n"), format!("[api]\n{key} = 1\n")] {
            std::fs::write(dir.path().join("schoolbell.toml"), body).unwrap();
            if let Err(e) = schoolbell::config::Config::load(dir.path()) {
                prop_assert!(e.to_string().contains("schoolbell.toml"), "{e}");
            }
        }
    }

    #[test]
    fn any_rule_text_compiles_or_is_refused_with_its_line(text in "\\PC{0,120}") {
        let dir = tempfile::tempdir().unwrap();
        let rules = schoolbell::rules::RuleSet::new(dir.path(), Default::default());
        for source in [text.clone(), format!("record.grade > {text}"), format!("fn f() {{ {text} }}")] {
            if let Err(e) = rules.compile("probe", "probe.rhai", &source) {
                prop_assert!(e.to_string().contains("probe.rhai"), "{e}");
            }
        }
    }
}
