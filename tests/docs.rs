//! Documents generated from the code, and frozen interfaces, stay as the
//! repository keeps them: the OpenAPI document the server serves, and the
//! released WIT versions (`wit/since_v*`), which must never change. (The
//! configuration reference has its own test beside `Config`.)

mod support;

use sha2::Digest;

/// A released WIT folder changed, or a new one appeared without its hashes.
#[test]
fn released_wit_versions_are_frozen() {
    let golden = std::fs::read_to_string(support::root().join("tests/golden/wit-released.sha256")).unwrap();
    let mut now = String::new();
    let wit = support::root().join("wit");
    let mut files: Vec<_> = std::fs::read_dir(&wit)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("since_v"))
        .flat_map(|dir| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()))
        .collect();
    files.sort();
    for file in files {
        let hash = hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()));
        now.push_str(&format!("{hash}  {}\n", file.strip_prefix(&wit).unwrap().display()));
    }
    for line in golden.lines() {
        assert!(
            now.lines().any(|l| l == line),
            "released WIT file changed or removed: {line}\nA released version is frozen: add a new since_vX.Y.Z folder instead (wit/README.md)."
        );
    }
    for line in now.lines() {
        assert!(
            golden.lines().any(|l| l == line),
            "a new WIT file is not recorded as released: {line}\nWhen the version ships, add its line to tests/golden/wit-released.sha256."
        );
    }
}

/// The OpenAPI document the server serves is the one kept in
/// `tests/golden/openapi.json`: a change to the API shows up in review.
#[test]
fn the_openapi_document_is_the_one_kept_in_the_repository() {
    let served = serde_json::to_string_pretty(&schoolbell::api::openapi_document()).unwrap() + "\n";
    let path = support::root().join("tests/golden/openapi.json");
    if std::env::var_os("SCHOOLBELL_BLESS").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        golden == served,
        "the OpenAPI document changed; if that is meant, run `SCHOOLBELL_BLESS=1 cargo test -p schoolbell --test docs` and commit tests/golden/openapi.json"
    );
    // Every route the router serves is in the document.
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    let source = std::fs::read_to_string(support::root().join("host/src/api.rs")).unwrap();
    for route in source.lines().filter_map(|l| l.trim().strip_prefix(".route(\"")).map(|l| l.split('"').next().unwrap())
    {
        assert!(doc["paths"][route].is_object(), "route {route} is not in the OpenAPI document");
    }
}
