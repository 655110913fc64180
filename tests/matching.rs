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

/// Seeded generations of smaller rosters with triplets, accented names,
/// empty SSNs and students who come back under a new ID. For every seed
/// and every row: the outcome is a documented one, a row with an ID is
/// about that ID only, no update changes a record's ID, and a new ID is a
/// new student (perhaps flagged), never `existing` or `updated` of another.
/// `SCHOOLBELL_MATCHING_SEEDS` sets how many generations (default 4).
#[test]
fn generated_rosters_with_triplets_accents_and_new_ids_keep_every_row_about_its_own_id() {
    const ACCENTED: [&str; 6] = ["García", "Nguyễn", "Müller", "Núñez", "Ødegård", "Çelik"];
    let seeds: u64 = std::env::var("SCHOOLBELL_MATCHING_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(4);
    for seed in 0..seeds {
        let sb = Sb::new();
        sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
        let mut rng = Xorshift(0x7e57_0000_0000_0001 + seed * 7919);
        let mut pick = |n: usize| (rng.next() % n as u64) as usize;
        let mut students: Vec<Student> = Vec::new();
        for i in 0..150 {
            let last = if pick(3) == 0 { ACCENTED[pick(ACCENTED.len())] } else { LAST[pick(LAST.len())] };
            let st = Student {
                id: format!("S{:06}", 100_000 + i),
                last: last.to_string(),
                first: FIRST[pick(FIRST.len())].to_string(),
                birth: format!("20{:02}-{:02}-{:02}", 8 + pick(6), 1 + pick(12), 1 + pick(28)),
                gender: if pick(2) == 0 { "F" } else { "M" },
                grade: 1 + pick(12) as u64,
                ssn: if pick(10) == 0 { format!("{:03}-{:02}-{:04}", 200 + seed, i % 100, i) } else { String::new() },
            };
            students.push(st);
        }
        // Three sets of triplets: the same name, birth date and gender.
        for t in 0..3 {
            for k in 1..3 {
                let base = students[t * 10].clone();
                students.push(Student { id: format!("S{:06}", 200_000 + t * 10 + k), ssn: String::new(), ..base });
            }
        }
        let seed_file: String = students.iter().map(|st| st.line(true)).collect();
        rows(&sb.import_roster("seed.csv", "match_student", &seed_file, &["--json"]));

        let mut file = String::new();
        let mut own_id: BTreeMap<u64, String> = BTreeMap::new();
        let mut new_ids = BTreeSet::new();
        let mut line = 1u64;
        for (i, st) in students.iter().enumerate() {
            let mut st = st.clone();
            match pick(6) {
                0 => st.grade += 1,
                1 => st.last = st.last.to_uppercase(),
                2 => st.last = st.last.chars().filter(char::is_ascii).collect(),
                _ => {}
            }
            // Some come back under a new ID (a re-enrolment, or another child).
            if i % 17 == 0 {
                st.id = format!("S{:06}", 400_000 + i);
                new_ids.insert(st.id.clone());
            }
            line += 1;
            let with_id = pick(12) != 0 || new_ids.contains(&st.id);
            if with_id {
                own_id.insert(line, st.id.clone());
            }
            file.push_str(&st.line(with_id));
        }
        let no_guard = ["--json", "--confirm-percent", "1000", "--authorize-percent", "1000"];
        let second = rows(&sb.import_roster("nightly.csv", "match_student", &file, &no_guard));
        for (line, word, fields) in &second {
            assert!(OUTCOMES.contains(&word.as_str()), "seed {seed}, line {line}: `{word}` is not documented");
            let key = fields["key"].as_str();
            if let (Some(own), Some(key)) = (own_id.get(line), key) {
                assert_eq!(key, own, "seed {seed}, line {line} ({word}) is about {key}, not the file's {own}");
            }
            if let Some(own) = own_id.get(line).filter(|id| new_ids.contains(*id)) {
                assert!(
                    ["new", "possible-duplicate"].contains(&word.as_str()),
                    "seed {seed}, line {line}: new ID {own} came out `{word}`"
                );
            }
            if word == "updated" || word == "ended" {
                let changed: Vec<&str> =
                    fields["changes"].as_array().unwrap().iter().map(|c| c[0].as_str().unwrap()).collect();
                assert!(!changed.contains(&"student-id"), "seed {seed}, line {line}: the key changed: {changed:?}");
            }
        }
    }
}

/// A rule may compare names folded (`folded("last-name")`): without case
/// or diacritics, "García" finds "GARCIA". Without it, names compare
/// trimmed and without case only. Accents never make a new ID update
/// another student.
#[test]
fn folded_names_match_across_case_and_accents() {
    let sb = Sb::with_own_rules();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    std::fs::write(
        sb.rules.join("match_folded.rhai"),
        "[[\"student-id\"], [folded(\"last-name\"), folded(\"first-name\"), \"birth-date\"]]\n",
    )
    .unwrap();
    let no_guard = ["--json", "--confirm-percent", "1000", "--authorize-percent", "1000"];
    rows(&sb.import_roster("first.csv", "match_folded", "S1,García,José,2010-01-02,M,9,\n", &no_guard));
    let second = rows(&sb.import_roster(
        "second.csv",
        "match_folded",
        ",GARCIA,jose,2010-01-02,M,10,\nS2,Garcia,Jose,2010-01-02,M,9,\n",
        &no_guard,
    ));
    assert_eq!(second[0].1, "updated", "{second:?}");
    assert_eq!(second[0].2["key"], "S1");
    assert_eq!(second[0].2["matched_on"], "folded:last-name + folded:first-name + birth-date");
    // A new ID is a new student, flagged as alike.
    let s2: Vec<&str> = second.iter().filter(|r| r.0 == 3).map(|r| r.1.as_str()).collect();
    assert_eq!(s2, ["new", "possible-duplicate"], "{second:?}");
}
