//! The host's own metrics: CPU (a rate between two readings of `/proc/stat`), load,
//! memory, uptime, and the filesystems holding `FLEET_HOME` and the apps' working
//! directories (`statvfs`). The parsers are pure and bounded (each reads what it needs
//! of a text and gives up on anything else); `HostSampler` is the I/O shell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_proto::agent::v1 as apb;

/// Filesystems reported per host, and directories named per filesystem: a host with
/// thousands of apps in thousands of directories still sends a bounded message.
pub const MAX_DISKS: usize = 32;
pub const MAX_PATHS_PER_DISK: usize = 16;

/// Cumulative CPU time of the whole host, in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// The first (`cpu `) line of `/proc/stat`: user, nice, system, idle, iowait, irq,
/// softirq, steal (guest time is already counted in user). Idle is idle plus iowait.
pub fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().next()?;
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 4 {
        return None;
    }
    let total = values.iter().fold(0u64, |sum, v| sum.saturating_add(*v));
    let idle = values[3].saturating_add(values.get(4).copied().unwrap_or(0));
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Busy share of all CPUs between two readings, 0 to 100.
pub fn cpu_percent(before: CpuTimes, now: CpuTimes) -> f64 {
    let total = now.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let busy = now.busy.saturating_sub(before.busy).min(total);
    (busy as f64 * 100.0 / total as f64).min(100.0)
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_ascii_whitespace();
    let mut load = [0.0; 3];
    for slot in &mut load {
        *slot = fields
            .next()?
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())?;
    }
    Some(load)
}

/// What `/proc/meminfo` says of memory and swap, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// `/proc/meminfo` (`Key:   N kB` lines). `MemAvailable` is missing before Linux 3.14:
/// free + buffers + cached stands in for it.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let mut values: BTreeMap<&str, u64> = BTreeMap::new();
    for line in text.lines().take(256) {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_ascii_whitespace();
        let (Some(number), unit) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        let scale = if unit == Some("kB") { 1024 } else { 1 };
        values.insert(key.trim(), number.saturating_mul(scale));
    }
    let get = |key: &str| values.get(key).copied();
    let total = get("MemTotal")?;
    let available = get("MemAvailable").unwrap_or_else(|| {
        let parts = ["MemFree", "Buffers", "Cached"].map(|k| get(k).unwrap_or(0));
        parts.iter().fold(0u64, |sum, v| sum.saturating_add(*v))
    });
    Some(Memory {
        total,
        available: available.min(total),
        swap_total: get("SwapTotal").unwrap_or(0),
        swap_free: get("SwapFree").unwrap_or(0),
    })
}

/// `/proc/uptime`'s first field, in milliseconds.
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let seconds: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some((seconds * 1000.0) as u64)
}

/// A mount from `/proc/self/mountinfo`: where, and which filesystem type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fs_type: String,
}

/// The mounts of a `mountinfo` text, in order (a later mount over the same point hides
/// an earlier one). Fields: id, parent, major:minor, root, mount point, options, then
/// optional fields up to `-`, then the filesystem type. Octal escapes (`\040`) undone.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.lines().take(16 * 1024) {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let Some(fs_type) = fields.get(dash + 1) else {
            continue;
        };
        if dash < 6 {
            continue;
        }
        mounts.push(Mount {
            point: PathBuf::from(unescape_octal(point)),
            fs_type: unescape_octal(fs_type),
        });
    }
    mounts
}

/// `\NNN` octal escapes, as the kernel writes spaces, tabs, newlines and backslashes.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3'
        });
        match escape {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |n, d| n * 8 + (d - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount a path lives on: the last mount whose point is the longest prefix of it.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for mount in mounts {
        if path.starts_with(&mount.point)
            && best.is_none_or(|b| mount.point.as_os_str().len() >= b.point.as_os_str().len())
        {
            best = Some(mount);
        }
    }
    best
}

/// Groups `paths` by the filesystem holding each: a mount point with its type and the
/// paths on it, at most `MAX_DISKS` filesystems and `MAX_PATHS_PER_DISK` paths each.
pub fn group_by_mount(mounts: &[Mount], paths: &[PathBuf]) -> Vec<(Mount, Vec<String>)> {
    let mut groups: Vec<(Mount, Vec<String>)> = Vec::new();
    for path in paths {
        let Some(mount) = mount_of(mounts, path) else {
            continue;
        };
        let text = path.display().to_string();
        if let Some((_, held)) = groups.iter_mut().find(|(m, _)| m.point == mount.point) {
            if held.len() < MAX_PATHS_PER_DISK && !held.contains(&text) {
                held.push(text);
            }
        } else if groups.len() < MAX_DISKS {
            groups.push((mount.clone(), vec![text]));
        }
    }
    groups
}

/// Samples the host; keeps the previous CPU reading so CPU is a rate.
#[derive(Default)]
pub struct HostSampler {
    previous: Option<CpuTimes>,
}

impl HostSampler {
    /// One reading: `paths` are the directories whose filesystems are reported
    /// (`FLEET_HOME` first, then the apps' working directories). Blocking: call it
    /// from a blocking thread.
    pub fn sample(&mut self, paths: &[PathBuf], now_unix_ms: u64) -> apb::HostMetrics {
        let read = |file: &str| std::fs::read_to_string(file).unwrap_or_default();
        let times = parse_cpu_times(&read("/proc/stat"));
        let cpu_percent = match (self.previous, times) {
            (Some(before), Some(now)) => cpu_percent(before, now),
            _ => 0.0,
        };
        if times.is_some() {
            self.previous = times;
        }
        let [load1, load5, load15] = parse_loadavg(&read("/proc/loadavg")).unwrap_or_default();
        let memory = parse_meminfo(&read("/proc/meminfo")).unwrap_or_default();
        let mounts = parse_mountinfo(&read("/proc/self/mountinfo"));
        let disks = group_by_mount(&mounts, paths)
            .into_iter()
            .filter_map(|(mount, paths)| disk_usage(mount, paths))
            .collect();
        apb::HostMetrics {
            at_unix_ms: now_unix_ms,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            cpu_percent,
            load1,
            load5,
            load15,
            memory_total_bytes: memory.total,
            memory_available_bytes: memory.available,
            swap_total_bytes: memory.swap_total,
            swap_free_bytes: memory.swap_free,
            disks,
            uptime_ms: parse_uptime_ms(&read("/proc/uptime")).unwrap_or(0),
        }
    }
}

/// `statvfs` of a mount point: total, available to unprivileged writers, used.
fn disk_usage(mount: Mount, paths: Vec<String>) -> Option<apb::DiskUsage> {
    let stat = nix::sys::statvfs::statvfs(&mount.point).ok()?;
    let fragment = stat.fragment_size() as u64;
    let total = (stat.blocks() as u64).saturating_mul(fragment);
    let free = (stat.blocks_free() as u64).saturating_mul(fragment);
    let available = (stat.blocks_available() as u64).saturating_mul(fragment);
    Some(apb::DiskUsage {
        mount_point: mount.point.display().to_string(),
        fs_type: mount.fs_type,
        total_bytes: total,
        available_bytes: available,
        used_bytes: total.saturating_sub(free),
        paths,
    })
}

#[cfg(test)]
mod tests;
