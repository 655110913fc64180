//! The Debian package `xtask/package` builds: what it installs where, the
//! hardening of its service unit, its maintainer scripts, and the
//! installed binary checking the installed config, rules and plugins.
//! `SCHOOLBELL_PACKAGE` names the .deb (`xtask/test` builds it and sets it);
//! without it the test says so and checks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

fn run(cmd: &mut Command) -> String {
    support::succeeded(cmd.output().unwrap(), &format!("{cmd:?}"))
}

fn package() -> Option<PathBuf> {
    let Some(deb) = std::env::var_os("SCHOOLBELL_PACKAGE") else {
        eprintln!("skipped: set SCHOOLBELL_PACKAGE to a .deb from `xtask/package` (xtask/test does)");
        return None;
    };
    // A relative path is taken from the workspace's root, where xtask runs.
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(deb))
}

#[test]
fn the_package_installs_the_service_hardened_and_its_binary_checks_the_installed_config() {
    let Some(deb) = package() else { return };
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/schoolbell",
        "./etc/schoolbell/schoolbell.toml",
        "./usr/lib/systemd/system/schoolbell.service",
        "./usr/share/schoolbell/rules/attendance_threshold.rhai",
        "./usr/share/schoolbell/rules/match_student.rhai",
        "./usr/share/schoolbell/plugins/import-csv-roster.wasm",
        "./usr/share/schoolbell/plugins/notifier-attendance.wasm",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(path)), "{path} is not in the package:\n{listing}");
    }
    assert!(!listing.contains("/test-"), "no test plugin ships:\n{listing}");
    let config_line = listing.lines().find(|l| l.ends_with("./etc/schoolbell/schoolbell.toml")).unwrap();
    assert!(config_line.starts_with("-rw-r-----"), "the config is not world-readable: {config_line}");

    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(root));
    let control = root.join("DEBIAN");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));

    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/schoolbell.service")).unwrap();
    for line in [
        "Type=notify",
        "User=schoolbell",
        "ExecStart=/usr/bin/schoolbell serve",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Environment=SCHOOLBELL_DATA=/var/lib/schoolbell",
        "Environment=SCHOOLBELL_CONFIG=/etc/schoolbell/schoolbell.toml",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/schoolbell",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "StateDirectoryMode=0700",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`:\n{unit}");
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group --home /var/lib/schoolbell"), "{postinst}");
    assert!(postinst.contains("install -d -o schoolbell -g schoolbell -m 0700 /var/lib/schoolbell"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper enable schoolbell.service"), "{postinst}");
    assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap().trim(), "/etc/schoolbell/schoolbell.toml");

    // The installed binary, pointed as the unit points it (but at a data
    // directory of the test's), checks the installed config, the shipped
    // rules and every shipped plugin.
    let data = root.join("var/lib/schoolbell");
    let bin = root.join("usr/bin/schoolbell");
    let installed = |args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .env("SCHOOLBELL_DATA", &data)
            .env("SCHOOLBELL_CONFIG", root.join("etc/schoolbell/schoolbell.toml"))
            .env("SCHOOLBELL_RULES", root.join("usr/share/schoolbell/rules"))
            .env_remove("RUST_LOG");
        run(&mut cmd)
    };
    let plugins: Vec<PathBuf> =
        std::fs::read_dir(root.join("usr/share/schoolbell/plugins")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(plugins.len(), 8, "{plugins:?}");
    for plugin in &plugins {
        installed(&["plugin", "install", "--grant-all", path(plugin)]);
    }
    let out = installed(&["check"]);
    assert!(out.starts_with("ok: config, rules and 8 plugins"), "{out}");
    assert_eq!(installed(&["rule", "list"]).lines().collect::<Vec<_>>(), ["attendance_threshold", "match_student"]);
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
