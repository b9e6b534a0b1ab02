//! Kiln's kernel-variant tuning is measured once per device and then read from disk: the
//! second call reports `from_cache` and measures nothing.

use kiln_runtime::tune;
use kiln_tests::wgpu_device;

#[test]
fn a_second_start_does_no_tuning() {
    let Some((info, device)) = wgpu_device() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("kiln-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = tune::tune_matvec(&info, &device, &dir).unwrap();
    assert!(!first.from_cache);
    assert!(
        first.timings.len() >= 7,
        "every variant measured: {:?}",
        first.timings
    );
    assert!(first.path.starts_with(&dir) && first.path.is_file());
    eprintln!("{}: {:?}", info.name, first.timings);
    let text = std::fs::read_to_string(&first.path).unwrap();
    assert!(text.contains(&format!("{:?}", first.reduction)), "{text}");

    let second = tune::tune_matvec(&info, &device, &dir).unwrap();
    assert!(second.from_cache, "the second start measured again");
    assert!(second.timings.is_empty());
    assert_eq!(second.reduction, first.reduction);

    // A damaged cache file is measured again and rewritten, not an error.
    std::fs::write(&first.path, b"{ not json").unwrap();
    let third = tune::tune_matvec(&info, &device, &dir).unwrap();
    assert!(!third.from_cache);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn device_keys_are_file_names() {
    let devices = kiln_runtime::probe_devices();
    for d in &devices.devices {
        let key = tune::device_key(d);
        assert!(!key.is_empty() && key.len() <= 120, "{key}");
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{key}"
        );
    }
}
