//! The fixture helper: present fixtures are found, missing ones skip locally and fail in CI.

use kiln_tests::locate_fixture;

#[test]
fn missing_fixture_skips_locally_and_fails_in_ci() {
    let empty = std::env::temp_dir().join(format!("kiln-no-models-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    assert_eq!(locate_fixture(&empty, "minilm", false), Ok(None));
    let err = locate_fixture(&empty, "minilm", true).unwrap_err();
    assert!(
        err.contains("CI must not skip") && err.contains("fetch-models.sh"),
        "{err}"
    );
    assert!(locate_fixture(&empty, "no-such-model", false).is_err());

    let dir = empty.join("all-minilm-l6-v2");
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(locate_fixture(&empty, "minilm", true), Ok(Some(dir)));
    std::fs::remove_dir_all(&empty).unwrap();
}
