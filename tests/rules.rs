//! The rule workbench through the real binary: `rule test` shows which
//! sample rows match and the values that decided, `rule save` refuses a
//! rule that does not compile, and a hostile rule fails its own evaluation
//! while the process carries on.

mod support;

use support::{Sb, s};

const SAMPLE: &str = r#"[
  {"student-id": "S1", "absences": 7, "division": "Upper", "campus": "North", "department": "Math", "level": "10"},
  {"student-id": "S2", "absences": 12, "division": "Lower", "campus": "South", "department": "Math", "level": "9"},
  {"student-id": "S3", "absences": 1, "division": "Lower", "campus": "North", "department": "Art", "level": "9"}
]"#;

fn attendance_params() -> Vec<&'static str> {
    vec![
        "--param",
        "threshold=5",
        "--param",
        "division=",
        "--param",
        "campus=North",
        "--param",
        "department=",
        "--param",
        "level=",
    ]
}

#[test]
fn rule_test_shows_which_rows_match_and_why() {
    let sb = Sb::new();
    let sample = sb.file("rows.json", SAMPLE);
    let rule = support::root().join("rules/attendance_threshold.rhai");
    let mut args = vec!["rule", "test", s(&rule), "--sample", s(&sample)];
    args.extend(attendance_params());
    let out = sb.ok(&args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("row 1: matches, because ") && lines[0].contains("absences=7"), "{out}");
    assert!(lines[0].contains("params.threshold=5"), "{out}");
    assert!(lines[1].starts_with("row 2: does not match, because ") && lines[1].contains("campus=\"South\""), "{out}");
    assert!(lines[2].starts_with("row 3: does not match, because ") && lines[2].contains("absences=1"), "{out}");
    assert_eq!(lines[3], "1 of 3 rows match");
}

#[test]
fn a_rule_that_does_not_compile_is_reported_with_its_position_and_never_saved() {
    let sb = Sb::new();
    let broken = sb.file("broken.rhai", "absences >=\n  (params.threshold +;\n");
    let err = sb.fails(&["rule", "check", s(&broken)]);
    assert!(err.contains("broken.rhai") && err.contains("line 2"), "{err}");
    // A rules folder of this test's own (the shared one stays untouched).
    let rules = sb.dir.path().join("rules");
    let schoolbell = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_schoolbell"))
            .arg("--data")
            .arg(sb.data())
            .arg("--rules")
            .arg(&rules)
            .args(args)
            .output()
            .unwrap()
    };
    let out = schoolbell(&["rule", "save", "strict", s(&broken)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2") && err.contains("the rule was not saved"), "{err}");
    assert!(!rules.join("strict.rhai").exists());

    let good = sb.file("good.rhai", "absences >= params.threshold * 2\n");
    let out = schoolbell(&["rule", "save", "strict", s(&good)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rule strict saved"), "{out:?}");
    assert_eq!(std::fs::read_to_string(rules.join("strict.rhai")).unwrap(), "absences >= params.threshold * 2\n");
    let listed = schoolbell(&["rule", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).lines().any(|l| l == "strict"), "{listed:?}");
}

#[test]
fn hostile_rules_fail_their_own_evaluation_and_the_process_carries_on() {
    let sb = Sb::new();
    let sample = sb.file("rows.json", SAMPLE);
    for (name, source, expect) in [
        ("loop.rhai", "loop { }\ntrue", "operations"),
        ("huge.rhai", "let s = \"x\"; loop { s += s; }\ntrue", "string"),
        ("deep.rhai", "fn f(n) { f(n + 1) }\nf(0)", "call"),
    ] {
        let rule = sb.file(name, source);
        let out = sb.ok(&["rule", "test", s(&rule), "--sample", s(&sample)]);
        let first = out.lines().next().unwrap();
        assert!(first.starts_with("row 1: error: ") && first.to_lowercase().contains(expect), "{name}: {out}");
        assert!(out.ends_with("0 of 3 rows match\n"), "{name}: {out}");
    }
}
