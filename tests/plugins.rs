//! End-to-end: the `schoolbell` binary with the real plugins, over a real
//! sled store in a temporary data directory.

mod support;

use support::{FOUR_COLUMNS, Sb, fallback_plugin, plugin, s};

const ROSTER: &str = "\u{feff}Student ID,Last Name,First Name,Birth Date,Grade\r\n\
S1,Ng,Ann,2010-01-02,10\r\n\
S2,\"Li, Jr.\",Bo,03/04/2011,9\r\n\
S3,Ko,Cy,2011-02-30,9\r\n\
S4,Ha,Di,2012-05-06,ten\r\n";

const ATTENDANCE: &str = r#"[
  {"student-id": "S1", "first-name": "Ann", "last-name": "Ng", "absences": 7, "division": "Upper", "campus": "North", "department": "Math", "level": "10"},
  {"student-id": "S2", "first-name": "Bo", "last-name": "Li", "absences": 12, "division": "Lower", "campus": "South", "department": "Math", "level": "9"},
  {"student-id": "S3", "first-name": "Cy", "last-name": "Ko", "absences": 1, "division": "Lower", "campus": "North", "department": "Art", "level": "9"}
]"#;

/// Imports `file` into `students` through import-csv-roster with `columns`.
fn import_students(sb: &Sb, file: &std::path::Path, columns: &str) -> String {
    sb.ok(&[
        "import",
        "file",
        "import-csv-roster",
        s(file),
        "--into",
        "students",
        "--key",
        "student-id",
        "--rows",
        "--param",
        columns,
    ])
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
    lines[0]
}

#[test]
fn install_is_idempotent_and_the_registry_shows_what_was_installed() {
    let sb = Sb::new();
    let attendance = plugin("notifier-attendance");
    let out = sb.ok(&["plugin", "install", s(&attendance)]);
    assert_eq!(out.trim(), "notifier-attendance 0.1.0 (notifier, WIT 0.1.3): installed");
    let out = sb.ok(&["plugin", "install", s(&attendance)]);
    assert!(out.contains("already installed (same bytes); nothing changed"), "{out}");

    let list: serde_json::Value = serde_json::from_str(&sb.ok(&["plugin", "list", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "notifier-attendance");
    assert_eq!(list[0]["kind"], "notifier");
    assert_eq!(list[0]["capabilities"], serde_json::json!([{ "ReadCollection": "attendance" }]));
    assert_eq!(list[0]["granted"], serde_json::json!([]));

    let inspect = sb.ok(&["plugin", "inspect", "notifier-attendance"]);
    assert!(inspect.contains("threshold (integer, default 5)"), "{inspect}");
    assert!(inspect.contains("asks for:   read:attendance"), "{inspect}");

    let err = sb.fails(&["plugin", "grant", "notifier-attendance", "read:staff"]);
    assert!(
        one_error_line(&err)
            .contains("it does not ask for read:staff, so it cannot be granted; it asks for: read:attendance"),
        "{err}"
    );
    let out = sb.ok(&["plugin", "grant", "notifier-attendance", "read:attendance"]);
    assert!(out.contains("now granted: read:attendance"), "{out}");
    let table = sb.ok(&["plugin", "list"]);
    assert!(table.lines().nth(1).unwrap().ends_with("read:attendance  read:attendance"), "{table}");

    sb.ok(&["plugin", "remove", "notifier-attendance"]);
    let err = sb.fails(&["plugin", "inspect", "notifier-attendance"]);
    assert!(one_error_line(&err).contains("no plugin named `notifier-attendance` is installed"), "{err}");
}

#[test]
fn bad_files_are_refused_with_one_line_that_says_what_is_wrong() {
    let sb = Sb::new();
    let text = sb.file("notes.wasm", "hello");
    let err = sb.fails(&["plugin", "install", s(&text)]);
    assert!(one_error_line(&err).ends_with("notes.wasm: not a WebAssembly file (no `\\0asm` header)"), "{err}");

    let core = sb.file("core.wasm", wat::parse_str("(module (func (export \"f\")))").unwrap());
    let err = sb.fails(&["plugin", "install", s(&core)]);
    assert!(one_error_line(&err).contains("core.wasm: a core WebAssembly module, not a component"), "{err}");

    let full = std::fs::read(plugin("notifier-attendance")).unwrap();
    let truncated = sb.file("truncated.wasm", &full[..full.len() / 2]);
    let err = sb.fails(&["plugin", "install", s(&truncated)]);
    assert!(one_error_line(&err).contains("truncated.wasm: not a valid WebAssembly component"), "{err}");

    let other = sb.file("other.wasm", component_exporting(&["acme:other/thing@1.0.0"]));
    let err = sb.fails(&["plugin", "install", s(&other)]);
    assert!(
        one_error_line(&err).contains("other.wasm: not a Schoolbell plugin: it exports neither world `notifier` nor `import-mapping` of schoolbell:plugin (it exports: acme:other/thing@1.0.0)"),
        "{err}"
    );

    let future = sb.file(
        "future.wasm",
        component_exporting(&["schoolbell:plugin/plugin@0.2.0", "schoolbell:plugin/notify@0.2.0"]),
    );
    let err = sb.fails(&["plugin", "install", s(&future)]);
    assert!(
        one_error_line(&err).contains(
            "future.wasm: built for schoolbell:plugin@0.2.0, but this host loads schoolbell:plugin@0.1.0 to 0.1.3"
        ),
        "{err}"
    );
    let list = sb.ok(&["plugin", "list", "--json"]);
    assert_eq!(list.trim(), "[]", "nothing may be stored by a refused install");
}

/// A minimal component exporting empty-ish instances under `names`.
fn component_exporting(names: &[&str]) -> Vec<u8> {
    let exports: String = names.iter().map(|n| format!("(export \"{n}\" (instance $x))\n")).collect();
    wat::parse_str(format!(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (instance $x (export "f" (func $f)))
             {exports})"#
    ))
    .unwrap()
}

#[test]
fn a_roster_maps_into_records_and_the_notifier_reads_them_through_the_rule() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster")), s(&plugin("notifier-attendance"))]);
    let roster = sb.file("roster.csv", ROSTER);
    let out = sb.ok(&[
        "import", "file", "import-csv-roster", s(&roster), "--into", "students", "--key", "student-id", "--rows",
        "--param", "columns=student-id=Student ID; last-name=Last Name; first-name=First Name; birth-date=Birth Date:date; grade=Grade:integer",
    ]);
    let expected = format!(
        "{}: 2 error, 2 new (2 records written to `students`)\n  line 2 new: new record S1\n  line 3 new: new record S2\n  line 4 error, field `Birth Date`: `****-02-30` in `Birth Date` is not a date; write YYYY-MM-DD or MM/DD/YYYY\n  line 5 error, field `Grade`: `ten` in `Grade` is not a whole number\n",
        s(&roster)
    );
    assert_eq!(out, expected);
    let students: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    assert_eq!(
        students,
        serde_json::json!([
            {"student-id": "S1", "last-name": "Ng", "first-name": "Ann", "birth-date": "2010-01-02", "grade": 10},
            {"student-id": "S2", "last-name": "Li, Jr.", "first-name": "Bo", "birth-date": "2011-03-04", "grade": 9}
        ])
    );

    sb.load_attendance(ATTENDANCE);
    let run = |params: &[&str]| -> serde_json::Value {
        let mut args = vec!["notify", "run", "notifier-attendance", "--json"];
        for p in params {
            args.extend(["--param", p]);
        }
        serde_json::from_str(&sb.ok(&args)).unwrap()
    };
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["notifications"].as_array().unwrap().iter().map(|n| n["dedupe_key"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(keys(&run(&[])), ["attendance:S1", "attendance:S2"]);
    assert_eq!(keys(&run(&["threshold=10"])), ["attendance:S2"]);
    assert_eq!(keys(&run(&["campus=North"])), ["attendance:S1"]);
    let all = run(&["campus=North"]);
    assert!(all["notifications"][0]["body"].as_str().unwrap().contains("absences=7, params.threshold=5"), "{all}");
    let err = sb.fails(&["notify", "run", "notifier-attendance", "--param", "threshold=many"]);
    assert!(one_error_line(&err).contains("parameter `threshold`: expected integer, got text `many`"), "{err}");
}

#[test]
fn a_missing_required_column_fails_the_whole_file_and_stores_nothing() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let roster = sb.file("bad.csv", "Student ID,Last Name,First Name\nS1,Ng,Ann\n");
    let err =
        sb.fails(&["import", "file", "import-csv-roster", s(&roster), "--into", "students", "--key", "student-id"]);
    assert!(
        one_error_line(&err).contains("bad.csv: File import has failed: column `Birth Date`: required column `Birth Date` is missing from the header"),
        "{err}"
    );
    let err = sb.fails(&["records", "list", "students"]);
    assert!(err.contains("collection `students` does not exist"), "{err}");
}

#[test]
fn a_notifier_reads_nothing_until_an_admin_grants_it() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", s(&plugin("notifier-attendance"))]);
    sb.load_attendance(ATTENDANCE);
    let err = sb.fails(&["notify", "run", "notifier-attendance"]);
    assert!(
        one_error_line(&err).contains(
            "plugin notifier-attendance 0.1.0 was refused: it may read collection `attendance` only once an admin grants it: `schoolbell plugin grant notifier-attendance read:attendance`"
        ),
        "{err}"
    );
}

#[test]
fn a_plugin_built_against_the_older_wit_still_loads_and_runs() {
    let sb = Sb::new();
    let out = sb.ok(&["plugin", "install", "--grant-all", s(&plugin("test-legacy-notifier"))]);
    assert!(out.contains("(notifier, WIT 0.1.0): installed"), "{out}");
    sb.load_attendance(ATTENDANCE);
    let out = sb.ok(&["notify", "run", "test-legacy-notifier"]);
    assert!(out.contains("legacy plugin saw 3 records"), "{out}");
}

#[test]
fn a_restart_loads_compiled_components_from_the_cache() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    let logged = |args: &[&str]| {
        let out = sb.command().env("RUST_LOG", "schoolbell=debug").args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    let first = logged(&["notify", "run", "notifier-attendance"]);
    assert!(first.contains("Component loaded from cache."), "install compiled and cached it:\n{first}");
    assert!(!first.contains("Component compiled."), "{first}");
    let cache: Vec<_> = std::fs::read_dir(sb.data().join("cache")).unwrap().collect();
    assert_eq!(cache.len(), 1);
}

#[test]
fn components_from_the_registry_only_toolchain_import_no_wasi_and_run() {
    let sb = Sb::new();
    for name in ["import-csv-roster", "notifier-attendance"] {
        let bytes = std::fs::read(fallback_plugin(name)).unwrap();
        assert!(!bytes.windows(5).any(|w| w == b"wasi:"), "{name} from the fallback should import no WASI");
    }
    sb.ok(&[
        "plugin",
        "install",
        "--grant-all",
        s(&fallback_plugin("import-csv-roster")),
        s(&fallback_plugin("notifier-attendance")),
    ]);
    let roster = sb.file("roster.csv", ROSTER);
    let out = import_students(&sb, &roster, FOUR_COLUMNS);
    assert!(out.contains("1 error, 3 new (3 records written to `students`)"), "{out}");
    sb.load_attendance(ATTENDANCE);
    let out = sb.ok(&["notify", "run", "notifier-attendance"]);
    assert!(out.starts_with("notifier-attendance: 2 notifications"), "{out}");
}

/// Runs the demo in a fresh data directory with the clock stopped at
/// `date`, noon UTC; its output.
fn demo_on(date: &str) -> (Sb, String) {
    let sb = Sb::new();
    let batch = sb.dir.path().join("batch");
    sb.file("data/schoolbell.toml", format!("[sandbox.folders]\nbatch = \"{}\"\n", batch.display()));
    let plugins = support::root().join("target/plugins");
    let out = sb
        .command()
        .env("SCHOOLBELL_NOW", format!("{date}T12:00:00Z"))
        .args(["demo", "--plugins", s(&plugins)])
        .output()
        .unwrap();
    assert!(out.status.success(), "demo on {date} failed: {}", String::from_utf8_lossy(&out.stderr));
    (sb, String::from_utf8(out.stdout).unwrap())
}

/// How many notifications the demo says a notifier gave.
fn fired(out: &str, plugin: &str) -> u64 {
    let prefix = format!("{plugin}: ");
    let line = out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{plugin} did not run:\n{out}"));
    line[prefix.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn the_demo_runs_the_shipped_plugins_over_the_demo_data() {
    let (sb, out) = demo_on("2026-11-30");
    assert!(out.contains("2 error, 8 new (8 records written to `students`)"), "{out}");
    assert!(out.contains("line 9 error, field `Birth Date`"), "{out}");
    let batch = sb.dir.path().join("batch");
    assert!(batch.join("names.csv").exists());
    assert!(!out.contains("test-hostile"), "test plugins are not shipped:\n{out}");
    // Idempotent: a second run installs nothing new and gives the same
    // result, except what the watermark has already seen.
    let plugins = support::root().join("target/plugins");
    let again = sb
        .command()
        .env("SCHOOLBELL_NOW", "2026-11-30T12:00:00Z")
        .args(["demo", "--plugins", s(&plugins)])
        .output()
        .unwrap();
    let again = String::from_utf8(again.stdout).unwrap();
    assert_eq!(fired(&again, "notifier-attendance"), 4, "{again}");
    assert_eq!(fired(&again, "notifier-status-since"), 0, "{again}");
}

/// Every shipped notifier fires on the demo data whatever day the demo
/// runs: on 29 February, around it, and on each demo student's birthday,
/// when that student is among the birthdays.
#[test]
fn the_demo_fires_every_notifier_on_any_day() {
    let birthdays = [
        ("03-14", "Maria Alvarez"),
        ("11-02", "Daniel Brooks"),
        ("06-25", "Li Chen"),
        ("01-08", "Amélie Dubois"),
        ("09-30", "Jordan Evans"),
        ("02-17", "Noah Fischer"),
        ("07-04", "Sofia Garcia"),
        ("12-12", "Liam O'Neil, Jr."),
    ];
    let mut days: Vec<(String, Option<&str>)> =
        ["2028-02-29", "2027-02-28", "2027-03-01"].iter().map(|d| (d.to_string(), None)).collect();
    days.extend(birthdays.iter().map(|(md, name)| (format!("2027-{md}"), Some(*name))));
    for (date, birthday) in days {
        let (_sb, out) = demo_on(&date);
        for plugin in [
            "notifier-attendance",
            "notifier-birthday",
            "notifier-immunization",
            "notifier-status-since",
            "notifier-blank-grades",
        ] {
            assert!(fired(&out, plugin) >= 1, "{plugin} on {date}:\n{out}");
        }
        assert!(out.contains("deleted 1 of 1 files"), "cleanup on {date}:\n{out}");
        assert!(out.contains("exported 10 students to names.csv"), "export on {date}:\n{out}");
        if let Some(name) = birthday {
            assert!(out.contains(&format!("Birthday: {name} turns")), "{name}'s birthday on {date}:\n{out}");
        }
    }
}

#[test]
fn rows_split_across_chunks_map_whole_wherever_the_boundary_falls() {
    // The host feeds mappings 64 KiB at a time. Put a delimiter exactly at
    // the end of the first chunk (the case that once ended a row early),
    // and let later boundaries fall wherever they fall.
    let header = "Student ID,Last Name,First Name,Birth Date\n";
    let rows: Vec<String> =
        (0..6000).map(|i| format!("S{i:05},Last{i},First{i},2010-01-{:02}\n", 1 + i % 28)).collect();
    let unpadded = format!("{header}{}", rows.concat());
    let last_comma = unpadded[..65536].rfind(',').unwrap();
    let pad = "x".repeat(65535 - last_comma);
    let mut rows = rows;
    rows[0] = format!("S00000,Last0{pad},First0,2010-01-01\n");
    let csv = format!("{header}{}", rows.concat());
    assert_eq!(csv.as_bytes()[65535], b',');

    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let file = sb.file("big.csv", csv);
    let out = import_students(&sb, &file, FOUR_COLUMNS);
    assert!(out.contains("6000 new (6000 records written to `students`)"), "{out}");
}

#[test]
fn a_second_import_matches_rows_by_the_rule_and_reports_each_one() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let first = sb.import_roster(
        "first.csv",
        "match_student",
        "S1,Ng,Ann,2010-01-02,F,9,111-22-3333\n\
         S2,Li,Bo,2011-03-04,M,8,\n\
         S3,Ko,Cy,2012-05-06,X,7,\n\
         S4,Ko,Cy,2012-05-06,X,7,\n",
        &[],
    );
    assert!(first.status.success());
    let second = "S1,Ng,Ann,2010-01-02,F,10,111-22-3333\n\
         S2,Li,Bo,2011-03-04,M,8,\n\
         ,Ng,Ann,2010-01-02,F,10,111-22-3333\n\
         ,Ko,Cy,2012-05-06,X,8,\n\
         S9,Wu,Di,2013-07-08,F,6,\n\
         S9,Wu,Di,2013-07-08,F,6,\n";
    // One new record of four existing is 25% added: the guard holds it for
    // authorization, which the CLI cannot give; nothing is written.
    let out = sb.import_roster("second.csv", "match_student", second, &[]);
    let file = sb.dir.path().join("second.csv");
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        report,
        [
            format!("{}: 2 duplicate, 1 existing, 1 multiple, 1 new, 1 updated; it adds, updates or removes 25.0% of the 4 existing records, so it needs an authorization (nothing written)", s(&file)).as_str(),
            "  line 2 updated: record S1 (matched on student-id) updated: grade: 9 → 10",
            "  line 3 existing: record S2 is unchanged; skipped",
            "  line 4 duplicate: record S1 was already set by line 2; skipped",
            "  line 5 multiple: multiple matching records on last-name + first-name + birth-date + gender: candidate S3; the row is not applied",
            "  line 5 multiple: multiple matching records on last-name + first-name + birth-date + gender: candidate S4; the row is not applied",
            "  line 6 new: new record S9",
            "  line 7 duplicate: record S9 was already set by line 6; skipped",
        ]
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("Nothing was written: file a request with `schoolbell import request"), "{stderr}");
    let students: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    assert_eq!(students.as_array().unwrap().len(), 4, "a held import writes nothing");
    assert_eq!(students[0]["grade"], 9);
    assert!(file.exists(), "a held file is not renamed");
}

#[test]
fn windows_1252_files_are_read_when_the_task_says_so_and_refused_clearly_otherwise() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let bytes = b"Student ID,Last Name,First Name,Birth Date\r\nS1,Dub\xe9,Ren\xe9e,2010-01-02\r\n".to_vec();
    let refused = sb.file("latin.csv", &bytes);
    let out = import_students(&sb, &refused, FOUR_COLUMNS);
    assert!(
        out.contains("line 2 error, field `Last Name`: invalid UTF-8 at byte 3; if the file comes from Excel on Windows, set the task's encoding to windows-1252"),
        "{out}"
    );
    let read = sb.file("latin2.csv", &bytes);
    let out = sb.ok(&[
        "import",
        "file",
        "import-csv-roster",
        s(&read),
        "--into",
        "students",
        "--key",
        "student-id",
        "--param",
        FOUR_COLUMNS,
        "--param",
        "encoding=windows-1252",
    ]);
    assert!(out.contains("1 new"), "{out}");
    let students: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    assert_eq!(students[0]["last-name"], "Dubé");
    assert_eq!(students[0]["first-name"], "Renée");
}

/// A vendor's path: scaffold, build with the project's guest toolchain
/// script, install, grant, run.
#[test]
fn a_scaffolded_notifier_builds_installs_and_runs() {
    let sb = Sb::new();
    let vendor = sb.dir.path().join("vendor");
    std::fs::create_dir_all(&vendor).unwrap();
    let out = sb.ok(&["plugin", "new", "notifier", "late-bus", "--dir", s(&vendor)]);
    assert!(out.contains("src/lib.rs is the whole plugin"), "{out}");
    let err = sb.fails(&["plugin", "new", "notifier", "late-bus", "--dir", s(&vendor)]);
    assert!(err.contains("already exists"), "{err}");
    let err = sb.fails(&["plugin", "new", "notifier", "Late Bus", "--dir", s(&vendor)]);
    assert!(err.contains("lowercase letters, digits and dashes"), "{err}");

    let out_dir = sb.dir.path().join("built");
    let status = std::process::Command::new(support::root().join("xtask/build-plugins"))
        .arg(vendor.join("late-bus"))
        .env("SCHOOLBELL_PLUGIN_OUT", &out_dir)
        .status()
        .unwrap();
    assert!(status.success(), "the scaffold builds with xtask/build-plugins");
    let wasm = out_dir.join("late-bus.wasm");
    let out = sb.ok(&["plugin", "install", s(&wasm)]);
    assert!(out.contains("late-bus 0.1.0 (notifier, WIT 0.1.3): installed"), "{out}");
    sb.ok(&["plugin", "grant", "late-bus", "read:students"]);
    let students = sb.file("students.json", r#"[{"student-id": "S1"}, {"student-id": "S2"}]"#);
    sb.ok(&["records", "load", "students", s(&students), "--key", "student-id"]);
    let out = sb.ok(&["notify", "run", "late-bus"]);
    assert!(out.starts_with("late-bus: 2 notifications"), "{out}");
    assert!(out.contains("[late-bus:S2] late-bus: student S2"), "{out}");
}

/// The README's example: a OneRoster `users.csv` mapped by the `columns`
/// parameter alone.
#[test]
fn a_oneroster_users_file_maps_with_the_readme_column_map() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let users = sb.file(
        "users.csv",
        "sourcedId,status,username,givenName,familyName,identifier,email,grades,birthDate\n\
         u1,active,ann.ng,Ann,Ng,S100,ann@district.test,09,2010-01-02\n\
         u2,active,bo.li,Bo,Li,S101,,10,\n",
    );
    let out = sb.ok(&[
        "import",
        "file",
        "import-csv-roster",
        s(&users),
        "--into",
        "students",
        "--key",
        "student-id",
        "--param",
        "columns=student-id=identifier; last-name=familyName; first-name=givenName; birth-date=birthDate:date?; email=email?; grade=grades?",
    ]);
    assert!(out.contains(": 2 new (2 records written to `students`)"), "{out}");
    let students: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    assert_eq!(students[0]["student-id"], "S100");
    assert_eq!(students[0]["birth-date"], "2010-01-02");
    assert_eq!(students[1]["last-name"], "Li");
    assert!(users.exists(), "a file imported by hand stays where and as it is");
}

/// Two children with the same name and birth date are two children: a row
/// with its own new ID is a new student (flagged as a possible duplicate),
/// never an update of the other; a fallback match that disagrees with the
/// row's own SSN is a conflict, applied to no one.
#[test]
fn matching_never_merges_two_students() {
    let sb = Sb::with_own_rules();
    std::fs::write(
        sb.rules.join("match_by_name_first.rhai"),
        "[[\"student-id\"], [\"last-name\", \"first-name\", \"birth-date\"], [\"ssn\"]]\n",
    )
    .unwrap();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let import = |name: &str, rule: &str, body: &str| -> String {
        let out = sb.import_roster(name, rule, body, &["--confirm-percent", "1000", "--authorize-percent", "1000"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let seed: String =
        (0..20).map(|i| format!("S1{i:05},Last{i},First{i},2010-01-{:02},F,9,{i:03}-00-0000\n", 1 + i % 28)).collect();
    import("seed.csv", "match_student", &format!("S100325,Ng,Ann,2010-01-02,F,11,111-22-3333\n{seed}"));

    let out = import(
        "nightly.csv",
        "match_student",
        "S300203,Ng,Ann,2010-01-02,M,7,\n\
         S300204,Ng,Ann,2010-01-02,F,11,\n",
    );
    assert!(out.contains("  line 2 new: new record S300203"), "{out}");
    assert!(
        out.contains("  line 2 possible-duplicate: new record S300203 has the same last-name + first-name + birth-date as S100325"),
        "{out}"
    );
    assert!(
        out.contains("  line 3 new: new record S300204"),
        "the same name, birth date and gender under a new ID is a new student: {out}"
    );
    assert!(out.contains("  line 3 possible-duplicate: new record S300204 has the same last-name + first-name + birth-date + gender as S100325"), "{out}");
    let ann: serde_json::Value =
        serde_json::from_str(&sb.ok(&["records", "list", "students", "--json", "--limit", "100"])).unwrap();
    let ann = ann.as_array().unwrap().iter().find(|r| r["student-id"] == "S100325").unwrap().clone();
    assert_eq!((ann["gender"].as_str(), ann["grade"].as_i64()), (Some("F"), Some(11)), "S100325 keeps her own data");

    // A rule that falls back to the name before the SSN: the SSN the row
    // brings disagrees with the record the name found.
    let out = import("by-name.csv", "match_by_name_first", ",Last5,First5,2010-01-06,F,9,999-88-7777\n");
    assert!(
        out.contains("  line 2 conflict, field `ssn`: matched")
            && out.contains(
                "by last-name + first-name + birth-date, but the file's ssn is ***-**-7777; the row is not applied"
            ),
        "{out}"
    );
    assert!(out.contains(": 1 conflict"), "the summary counts conflicts: {out}");
}

/// Malformed files a person can act on: a UTF-16 file is named as such,
/// and a NUL byte in a key field fails its own line only.
#[test]
fn a_utf16_file_is_named_and_a_nul_in_a_key_fails_its_line_only() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let text = "Student ID,Last Name,First Name,Birth Date\nS1,Ng,Ann,2010-01-02\n";
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(text.encode_utf16().flat_map(|u| u.to_le_bytes()));
    let file = sb.file("u16.csv", &utf16);
    let err = sb.fails(&["import", "file", "import-csv-roster", s(&file), "--into", "students", "--key", "student-id"]);
    assert!(one_error_line(&err).contains("u16.csv: the file is UTF-16; save it as UTF-8"), "{err}");
    let no_bom: Vec<u8> = text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    let file = sb.file("u16-no-bom.csv", &no_bom);
    let err = sb.fails(&["import", "file", "import-csv-roster", s(&file), "--into", "students", "--key", "student-id"]);
    assert!(err.contains("the file is UTF-16"), "without a byte-order mark too: {err}");

    let file = sb.file(
        "nul.csv",
        "Student ID,Last Name,First Name,Birth Date\nS1,Ng,Ann,2010-01-02\nS\u{0}2,Li,Bo,2011-03-04\n",
    );
    let out = import_students(&sb, &file, FOUR_COLUMNS);
    assert!(out.contains(": 1 error, 1 new (1 records written"), "{out}");
    assert!(out.contains("  line 3 error, field `student-id`: `student-id` holds a NUL character"), "{out}");
}

/// A quote that never closes is reported where it opens, with how many
/// lines it swallowed, instead of silently eating the rows after it.
#[test]
fn an_unclosed_quote_is_reported_where_it_opens_with_what_it_swallowed() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let file = sb.file(
        "quote.csv",
        "Student ID,Last Name,First Name,Birth Date\nS1,Ng,Ann,2010-01-02\nS2,\"Li,Bo,2011-03-04\nS3,Ko,Cy,2012-05-06\nS4,Wu,Di,2013-01-01\n",
    );
    let out = import_students(&sb, &file, FOUR_COLUMNS);
    assert!(out.contains(": 1 error, 1 new"), "{out}");
    assert!(
        out.contains("  line 3 error, field `Last Name`: a quote opens on line 3 and never closes: the 2 lines after it, to the end of the file, were read as one field"),
        "{out}"
    );
}

/// A field too large for the mapping fails its own row with its line and
/// column, whatever the column, and the rows around it import; the
/// mapping's memory never holds it.
#[test]
fn a_field_past_the_limit_fails_its_row_with_line_and_column() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let huge = "x".repeat(20 << 20);
    let file = sb.file(
        "notes.csv",
        format!(
            "Student ID,Last Name,First Name,Birth Date,Notes\nS1,Ng,Ann,2010-01-02,fine\nS2,Li,Bo,2011-03-04,{huge}\nS3,Ko,Cy,2012-05-06,\n"
        ),
    );
    let out = import_students(&sb, &file, FOUR_COLUMNS);
    assert!(out.contains(": 1 error, 2 new"), "{out}");
    assert!(
        out.contains("  line 3 error, field `Notes`: a field of 20 MB is larger than the limit of 1 MB (max-field-bytes); the row is not imported"),
        "{out}"
    );
}
