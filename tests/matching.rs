//! Matching over generated rosters with the shipped rule: twins (same name
//! and birth date), empty SSNs, case variants of names, rows found by SSN
//! or by name alone. Whatever the mix, an import never merges two people.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use support::{Sb, Xorshift, plugin, s};

#[derive(Clone)]
struct Student {
    id: String,
    last: String,
    first: String,
    birth: String,
    gender: &'static str,
    grade: u64,
    ssn: String,
}

impl Student {
    fn line(&self, id: bool) -> String {
        let id = if id { self.id.as_str() } else { "" };
        format!("{id},{},{},{},{},{},{}\n", self.last, self.first, self.birth, self.gender, self.grade, self.ssn)
    }
}

const LAST: [&str; 12] =
    ["Ng", "Li", "Ko", "Garcia", "Nguyen", "Smith", "Chen", "Okafor", "Novak", "Brown", "Diaz", "Kim"];
const FIRST: [&str; 10] = ["Ann", "Bo", "Cy", "Di", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jo"];

/// Every outcome a row may have, as the README lists them.
const OUTCOMES: [&str; 11] = [
    "new",
    "updated",
    "ended",
    "removed",
    "existing",
    "multiple",
    "duplicate",
    "inactivated",
    "error",
    "conflict",
    "possible-duplicate",
];

/// The rows of an `import file --json` run: line, outcome word, its fields.
fn rows(out: &std::process::Output) -> Vec<(u64, String, Value)> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["plan"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (word, fields) = r["outcome"].as_object().unwrap().iter().next().unwrap();
            (r["line"].as_u64().unwrap(), word.clone(), fields.clone())
        })
        .collect()
}

#[test]
fn generated_rosters_with_twins_never_merge_two_students() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let mut rng = Xorshift(0x5eed_1234_abcd_0001);
    let mut pick = |n: usize| (rng.next() % n as u64) as usize;

    // 1,000 students; the last 20 are twins of earlier ones (same name,
    // birth date and gender, their own ID, no SSN). Half have an SSN.
    let mut students: Vec<Student> = Vec::new();
    for i in 0..1000 {
        let student = if i >= 980 {
            let sibling = students[(i - 980) * 37].clone();
            Student { id: format!("S{:06}", 100_000 + i), ssn: String::new(), ..sibling }
        } else {
            Student {
                id: format!("S{:06}", 100_000 + i),
                last: LAST[pick(LAST.len())].to_string(),
                first: FIRST[pick(FIRST.len())].to_string(),
                birth: format!("20{:02}-{:02}-{:02}", 8 + pick(6), 1 + pick(12), 1 + pick(28)),
                gender: if pick(2) == 0 { "F" } else { "M" },
                grade: 1 + pick(12) as u64,
                ssn: if i % 2 == 0 { format!("{:03}-{:02}-{:04}", 100 + i / 100, i % 100, i) } else { String::new() },
            }
        };
        students.push(student);
    }
    let seed: String = students.iter().map(|st| st.line(true)).collect();
    let first = rows(&sb.import_roster("seed.csv", "match_student", &seed, &["--json"]));
    assert_eq!(first.iter().filter(|(_, w, _)| w == "new").count(), 1000, "every student is created");
    assert!(first.iter().all(|(_, w, _)| w == "new" || w == "possible-duplicate"));

    // The nightly file: every student again (some with a new grade, some
    // with the last name in capitals), 20 new twins under new IDs, 10 rows
    // without an ID found by SSN, and rows without ID or SSN by name.
    let mut file = String::new();
    let mut own_id: BTreeMap<u64, String> = BTreeMap::new();
    let mut line = 1;
    let mut push = |file: &mut String, st: &Student, with_id: bool| {
        line += 1;
        if with_id {
            own_id.insert(line, st.id.clone());
        }
        file.push_str(&st.line(with_id));
    };
    for (i, st) in students.iter().enumerate() {
        let mut st = st.clone();
        if i % 25 == 0 {
            st.grade += 1;
        }
        if i % 40 == 0 {
            st.last = st.last.to_uppercase();
        }
        push(&mut file, &st, true);
    }
    let mut twins = BTreeSet::new();
    for t in 0..20 {
        let sibling = &students[t * 41 + 3];
        let twin = Student { id: format!("S{:06}", 300_000 + t), ssn: String::new(), ..sibling.clone() };
        twins.insert(twin.id.clone());
        push(&mut file, &twin, true);
    }
    let by_ssn: Vec<Student> = students.iter().filter(|st| !st.ssn.is_empty()).step_by(50).take(10).cloned().collect();
    for st in &by_ssn {
        push(&mut file, st, false);
    }
    for st in students.iter().filter(|st| st.ssn.is_empty()).take(5) {
        push(&mut file, st, false);
    }
    let second = rows(&sb.import_roster(
        "nightly.csv",
        "match_student",
        &file,
        &["--json", "--confirm-percent", "1000", "--authorize-percent", "1000"],
    ));

    for (line, word, fields) in &second {
        assert!(OUTCOMES.contains(&word.as_str()), "line {line}: `{word}` is not a documented outcome");
        let key = fields["key"].as_str();
        if let (Some(own), Some(key)) = (own_id.get(line), key) {
            // A row that brings its own ID is about that ID and no other.
            assert_eq!(key, own, "line {line} ({word}) is about {key}, but the file's student-id is {own}");
        }
        if word == "updated" || word == "ended" {
            let changed: Vec<&str> =
                fields["changes"].as_array().unwrap().iter().map(|c| c[0].as_str().unwrap()).collect();
            assert!(!changed.contains(&"student-id"), "line {line}: an update changed a record's key: {changed:?}");
        }
    }
    let created: BTreeSet<String> =
        second.iter().filter(|(_, w, _)| w == "new").map(|(_, _, f)| f["key"].as_str().unwrap().to_string()).collect();
    assert_eq!(created, twins, "the twins, and only they, are new students");
    let flagged: BTreeSet<String> = second
        .iter()
        .filter(|(_, w, _)| w == "possible-duplicate")
        .map(|(_, _, f)| f["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(flagged, twins, "each new twin is flagged as a possible duplicate");
    let count = |word: &str| second.iter().filter(|(_, w, _)| w == word).count();
    assert_eq!(count("conflict"), 0, "the shipped rule's order leaves no room for conflicts");
    // New grades (every 25th: 40) and capitalised names (every 40th: 25), 5 rows both.
    assert_eq!(count("updated"), 40 + 25 - 5);
    let students_now: Value =
        serde_json::from_str(&sb.ok(&["records", "list", "students", "--json", "--limit", "2000"])).unwrap();
    assert_eq!(students_now.as_array().unwrap().len(), 1020);
}
