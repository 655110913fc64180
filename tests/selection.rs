//! Rules decided inside the host (`select-records`, WIT 0.1.3) choose the
//! same records, for the same reasons, as a plugin from before it that asks
//! `eval-rule` about each record; and an index that narrows the candidates
//! changes nothing but the work done.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use schoolbell::plugins::{PluginHost, RunRequest, SandboxConfig};
use schoolbell::records::{Record, Value};
use schoolbell::rules::RuleSet;
use schoolbell::store::{CollectionSpec, Store};

/// A collection large enough for several of each plugin's pages.
const RECORDS: usize = 2_500;

fn attendance(i: usize) -> Record {
    let text = |s: &str| Value::Text(s.to_string());
    Record::from([
        ("student-id".to_string(), Value::Text(format!("S{i:05}"))),
        ("first-name".to_string(), Value::Text(format!("First{i}"))),
        ("last-name".to_string(), Value::Text(format!("Last{i}"))),
        ("absences".to_string(), Value::Int((i % 40) as i64)),
        ("division".to_string(), text(["Upper", "Lower"][i % 2])),
        // Mixed case and spaces, which the index ignores and the rule does not.
        ("campus".to_string(), text(["North", "South", "East", " north"][i % 4])),
        ("department".to_string(), text("Math")),
        ("level".to_string(), text("10")),
    ])
}

struct Fixture {
    _dir: tempfile::TempDir,
    host: PluginHost,
}

fn fixture(indexes: Vec<Vec<String>>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_backend(&dir.path().join("store")).unwrap();
    store.define_collection("attendance", &CollectionSpec { key_field: "student-id".into(), indexes }).unwrap();
    let records: Vec<Record> = (0..RECORDS).map(attendance).collect();
    store.put_records("attendance", &records).unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::copy(support::root().join("rules/attendance_threshold.rhai"), rules_dir.join("attendance_threshold.rhai"))
        .unwrap();
    std::fs::write(rules_dir.join("campus_first.rhai"), "campus == params.campus && absences >= params.threshold")
        .unwrap();
    let rules = RuleSet::load_dir(&rules_dir, Default::default()).unwrap();
    let host =
        PluginHost::new(store.clone(), Arc::new(rules), &dir.path().join("cache"), SandboxConfig::default()).unwrap();
    for plugin in ["notifier-attendance", "test-legacy-rule-notifier"] {
        host.install(&support::plugin(plugin)).unwrap();
        host.grant_all(plugin).unwrap();
    }
    Fixture { _dir: dir, host }
}

fn params(rule: &str) -> Record {
    let text = |s: &str| Value::Text(s.to_string());
    Record::from([
        ("threshold".to_string(), Value::Int(30)),
        ("rule".to_string(), text(rule)),
        ("division".to_string(), text("")),
        ("campus".to_string(), text("North")),
        ("department".to_string(), text("")),
        ("level".to_string(), text("")),
    ])
}

/// Each qualifying student's id and the reason the rule gave.
fn selected(f: &Fixture, plugin: &str, rule: &str) -> BTreeMap<String, String> {
    let request =
        RunRequest { task: "t".into(), params: params(rule), rules: vec![rule.into()], ..RunRequest::default() };
    let outcome = f.host.run_notifier(plugin, &request).unwrap();
    outcome
        .notifications
        .iter()
        .map(|n| {
            let id = n.dedupe_key.rsplit(':').next().unwrap().to_string();
            let reason = n.body.split("Rule: ").nth(1).unwrap().trim_end_matches('.').to_string();
            (id, reason)
        })
        .collect()
}

#[test]
fn a_selection_in_the_host_decides_as_a_0_1_2_plugin_asking_record_by_record() {
    let f = fixture(vec![]);
    let in_host = selected(&f, "notifier-attendance", "attendance_threshold");
    let per_record = selected(&f, "test-legacy-rule-notifier", "attendance_threshold");
    let expected = (0..RECORDS).filter(|i| i % 40 >= 30 && i % 4 == 0).count();
    assert_eq!(in_host.len(), expected, "{in_host:?}");
    assert_eq!(in_host, per_record);
    let (_, reason) = in_host.first_key_value().unwrap();
    assert!(reason.starts_with("absences=3"), "{reason}");
    assert!(reason.contains("params.campus=\"North\", campus=\"North\""), "{reason}");
}

#[test]
fn an_index_on_the_first_condition_narrows_to_the_same_selection() {
    let plain = fixture(vec![]);
    let everything = selected(&plain, "notifier-attendance", "campus_first");
    assert!(!everything.is_empty());
    for index in ["campus", "folded:campus"] {
        let indexed = fixture(vec![vec![index.to_string()]]);
        assert_eq!(selected(&indexed, "notifier-attendance", "campus_first"), everything, "index {index}");
    }
}
