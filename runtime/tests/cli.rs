//! The `kiln` binary as a user meets it: exit codes, one-line errors, JSON that parses.

use std::process::Command;

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

#[test]
fn devices_lists_the_cpu_and_exits_zero() {
    let out = kiln(&["devices"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("cpu "), "{text}");
    assert!(text.contains("SIMD:"), "{text}");
}

#[test]
fn devices_json_parses_and_names_every_device() {
    let out = kiln(&["devices", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let devices = v["devices"].as_array().expect("devices array");
    assert_eq!(devices[0]["id"], "cpu");
    assert!(devices[0]["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    for d in devices {
        assert!(d["name"].is_string() && d["api"].is_string(), "{d}");
    }
    assert!(v["notes"].is_array());
}

#[test]
fn usage_errors_exit_2() {
    let out = kiln(&["devices", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = kiln(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn inspect_of_a_missing_file_is_one_line_and_exit_1() {
    let out = kiln(&["inspect", "/nonexistent/model.gguf"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kiln: error: /nonexistent/model.gguf"),
        "{err}"
    );
}

#[test]
fn inspect_of_a_non_gguf_file_names_the_problem() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not.gguf");
    std::fs::write(&path, b"PK\x03\x04 definitely a zip").unwrap();
    let out = kiln(&["inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not a GGUF file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A machine whose GPU driver is missing or broken: `kiln devices` still lists the CPU, says
/// why there is no GPU, and exits 0.
#[cfg(target_os = "linux")]
#[test]
fn devices_without_a_driver_says_so_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("devices")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl.json")
        .output()
        .expect("run kiln");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("cpu "), "{text}");
    assert!(!text.contains("wgpu:0"), "{text}");
    assert!(text.contains("wgpu: no adapter found"), "{text}");
}
