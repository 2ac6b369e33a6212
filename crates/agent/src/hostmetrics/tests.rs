//! The parsers against real texts from a Linux host, then generated and mutated
//! inputs (no panic, bounded results); the sampler against this machine's `/proc`.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

const STAT: &str = "cpu  4705 356 584 3699176 23 23 0 0 0 0\ncpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0\n";
const MEMINFO: &str = "MemTotal:       16314348 kB\nMemFree:         1069084 kB\nMemAvailable:   10291236 kB\nBuffers:          514932 kB\nCached:          8372960 kB\nSwapTotal:       2097148 kB\nSwapFree:        2097148 kB\nHugePages_Total:       0\n";
const MOUNTINFO: &str = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
    23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
    40 22 259:3 / /srv rw,relatime shared:20 - xfs /dev/nvme0n1p3 rw\n\
    41 40 0:45 / /srv/my\\040apps rw - tmpfs tmpfs rw,size=1024k\n\
    42 22 0:46 / /srv rw - tmpfs tmpfs rw\n";

#[test]
fn cpu_is_a_rate_between_two_readings() {
    let first = parse_cpu_times(STAT).unwrap();
    assert_eq!(first.total, 4705 + 356 + 584 + 3699176 + 23 + 23);
    assert_eq!(first.busy, 4705 + 356 + 584 + 23);
    let later = CpuTimes {
        busy: first.busy + 50,
        total: first.total + 200,
    };
    assert_eq!(cpu_percent(first, later), 25.0);
    assert_eq!(
        cpu_percent(later, first),
        0.0,
        "a counter going back is no load"
    );
    assert_eq!(
        parse_cpu_times("cpu0 1 2 3 4\n"),
        None,
        "the first line must be the total"
    );
    assert_eq!(parse_cpu_times("cpu 1 2 x 4\n"), None);
}

#[test]
fn load_memory_and_uptime_are_read() {
    assert_eq!(
        parse_loadavg("0.52 0.58 0.59 1/467 12345\n"),
        Some([0.52, 0.58, 0.59])
    );
    assert_eq!(parse_loadavg("0.5 nan 1"), None);
    let memory = parse_meminfo(MEMINFO).unwrap();
    assert_eq!(memory.total, 16314348 * 1024);
    assert_eq!(memory.available, 10291236 * 1024);
    assert_eq!(memory.swap_free, 2097148 * 1024);
    let old_kernel =
        parse_meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 20 kB\n");
    assert_eq!(old_kernel.unwrap().available, 35 * 1024);
    assert_eq!(parse_uptime_ms("350735.47 234388.90\n"), Some(350_735_470));
    assert_eq!(parse_uptime_ms("-1 0"), None);
}

#[test]
fn each_path_is_found_on_the_last_longest_mount() {
    let mounts = parse_mountinfo(MOUNTINFO);
    assert_eq!(mounts.len(), 5);
    assert_eq!(mounts[3].point, Path::new("/srv/my apps"));
    let fs = |path: &str| mount_of(&mounts, Path::new(path)).unwrap().fs_type.clone();
    assert_eq!(fs("/root/.fleet"), "ext4");
    // `/srv` was mounted over: the later tmpfs hides the xfs.
    assert_eq!(fs("/srv/fleet"), "tmpfs");
    assert_eq!(
        mount_of(&mounts, Path::new("/srv/fleet")).unwrap().point,
        Path::new("/srv")
    );
    assert_eq!(fs("/srv/my apps/api"), "tmpfs");
    assert_eq!(
        mount_of(&mounts, Path::new("/srv/my apps/api"))
            .unwrap()
            .point,
        Path::new("/srv/my apps")
    );
    let groups = group_by_mount(
        &mounts,
        &[
            PathBuf::from("/root/.fleet"),
            PathBuf::from("/srv/a"),
            PathBuf::from("/srv/b"),
            PathBuf::from("/srv/a"),
        ],
    );
    let summary: Vec<(String, Vec<String>)> = groups
        .into_iter()
        .map(|(m, paths)| (m.point.display().to_string(), paths))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("/".to_string(), vec!["/root/.fleet".to_string()]),
            (
                "/srv".to_string(),
                vec!["/srv/a".to_string(), "/srv/b".to_string()]
            ),
        ]
    );
}

#[test]
fn many_directories_stay_bounded() {
    let mounts: Vec<Mount> = (0..100)
        .map(|n| Mount {
            point: PathBuf::from(format!("/m{n}")),
            fs_type: "ext4".into(),
        })
        .collect();
    let paths: Vec<PathBuf> = (0..100)
        .flat_map(|n| (0..40).map(move |k| PathBuf::from(format!("/m{n}/app{k}"))))
        .collect();
    let groups = group_by_mount(&mounts, &paths);
    assert_eq!(groups.len(), MAX_DISKS);
    assert!(groups.iter().all(|(_, p)| p.len() == MAX_PATHS_PER_DISK));
}

#[test]
fn this_host_is_sampled() {
    let mut sampler = HostSampler::default();
    let home = std::env::temp_dir();
    let first = sampler.sample(std::slice::from_ref(&home), 1);
    assert!(first.cpus >= 1);
    assert!(first.memory_total_bytes > 0);
    assert!(first.memory_available_bytes <= first.memory_total_bytes);
    assert!(first.uptime_ms > 0);
    assert_eq!(first.disks.len(), 1, "{:?}", first.disks);
    let disk = &first.disks[0];
    assert!(disk.total_bytes > 0 && disk.available_bytes <= disk.total_bytes);
    assert_eq!(disk.paths, vec![home.display().to_string()]);
    let second = sampler.sample(&[], 2);
    assert!((0.0..=100.0).contains(&second.cpu_percent));
}

fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(at, op, byte) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % bytes.len()
        };
        match op % 3 {
            0 if !bytes.is_empty() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_proc_files_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..16)
    ) {
        if let Some(times) = parse_cpu_times(&mutate(STAT, &edits)) {
            prop_assert!(times.busy <= times.total);
        }
        if let Some(memory) = parse_meminfo(&mutate(MEMINFO, &edits)) {
            prop_assert!(memory.available <= memory.total);
        }
        let _ = parse_loadavg(&mutate("0.52 0.58 0.59 1/467 12345\n", &edits));
        let _ = parse_uptime_ms(&mutate("350735.47 234388.90\n", &edits));
        let mounts = parse_mountinfo(&mutate(MOUNTINFO, &edits));
        let _ = group_by_mount(&mounts, &[PathBuf::from("/srv/a"), PathBuf::from("/x")]);
    }

    #[test]
    fn generated_proc_files_never_panic(text in "[ -~\\n\\t]{0,300}") {
        let _ = parse_cpu_times(&text);
        let _ = parse_meminfo(&text);
        let _ = parse_loadavg(&text);
        let _ = parse_uptime_ms(&text);
        let _ = parse_mountinfo(&text);
    }

    #[test]
    fn cpu_percent_stays_within_0_and_100(a: (u64, u64), b: (u64, u64)) {
        let before = CpuTimes { busy: a.0.min(a.1), total: a.1 };
        let now = CpuTimes { busy: b.0.min(b.1), total: b.1 };
        let percent = cpu_percent(before, now);
        prop_assert!((0.0..=100.0).contains(&percent));
    }
}
