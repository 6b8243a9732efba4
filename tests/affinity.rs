//! Pinning the driver's worker threads (`runtime::affinity`), on the real adapter.
//!
//! One test in its own binary, because it sets `NETC_PIN_THREADS` for the process.

use netc::runtime::{Gpu, Pinning, RuntimeError};

/// Returns the cores in a `Cpus_allowed_list` line of `/proc/.../status`, such as `0-3,6`.
fn allowed_list(status: &str) -> Vec<usize> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("status has Cpus_allowed_list");
    line.trim()
        .split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

#[test]
fn worker_threads_are_pinned_one_to_a_core() {
    let gpu = Gpu::open(None).expect("this test needs a wgpu adapter (lavapipe)");

    std::env::set_var("NETC_PIN_THREADS", "sideways");
    match gpu.pin_driver_threads() {
        Err(RuntimeError::InvalidSetting { name, value, .. }) => {
            assert_eq!(name, "NETC_PIN_THREADS");
            assert_eq!(value, "sideways");
        }
        other => panic!("an invalid setting must be rejected, got {other:?}"),
    }
    std::env::set_var("NETC_PIN_THREADS", "x".repeat(10_000));
    match gpu.pin_driver_threads() {
        Err(RuntimeError::InvalidSetting { value, .. }) => assert_eq!(value.len(), 43, "{value}"),
        other => panic!("a long invalid setting must be rejected, got {other:?}"),
    }
    std::env::set_var("NETC_PIN_THREADS", "off");
    match gpu.pin_driver_threads().expect("off is a valid setting") {
        Pinning::Skipped(reason) => assert!(reason.contains("NETC_PIN_THREADS"), "{reason}"),
        other => panic!("off must pin nothing, got {other:?}"),
    }
    std::env::remove_var("NETC_PIN_THREADS");

    let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
    let cores = allowed_list(&std::fs::read_to_string("/proc/self/status").unwrap());
    let pinning = gpu.pin_driver_threads().expect("pinning reports, not fails");
    if !cpu {
        assert_eq!(pinning, Pinning::Skipped("the adapter is not a CPU".to_string()));
        return;
    }
    if cores.len() < 2 || std::env::var_os("LP_NUM_THREADS").is_some() {
        eprintln!("{} core(s) allowed or LP_NUM_THREADS set: {pinning:?}", cores.len());
        return;
    }
    // Lavapipe starts one worker per core, so each gets a core of its own.
    let Pinning::Pinned(threads) = pinning else {
        panic!("lavapipe's workers on {} cores were not pinned: {pinning:?}", cores.len());
    };
    assert!(threads.len() >= 2, "{threads:?}");
    let mut used: Vec<usize> = threads.iter().map(|&(_, core)| core).collect();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used.len(), threads.len(), "two workers share a core: {threads:?}");
    for (tid, core) in threads {
        assert!(cores.contains(&core), "core {core} is outside the allowed {cores:?}");
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        assert_eq!(allowed_list(&status), vec![core], "thread {tid}");
    }
    // The calling thread keeps every core it had.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert_eq!(allowed_list(&status), cores);
}
