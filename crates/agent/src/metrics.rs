//! CPU and memory of each instance's whole process tree, read from `/proc`. PM2 counts
//! only the main pid (#261, #3319); fleet sums every descendant of the leader and every
//! member of its process group (children re-parented to init after a crash included).

use std::collections::HashMap;
use std::time::Instant;

/// One reading of one process.
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    ppid: i32,
    pgrp: i32,
    cpu_ticks: u64,
    rss_pages: u64,
}

/// The tree totals of one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TreeUsage {
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

/// Keeps the previous reading of each tree so CPU is a rate over the last interval.
pub struct Sampler {
    ticks_per_second: f64,
    page_size: u64,
    previous: HashMap<i32, (Instant, u64)>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler {
            ticks_per_second: procfs::ticks_per_second() as f64,
            page_size: procfs::page_size(),
            previous: HashMap::new(),
        }
    }

    /// Reads every process once and totals the tree of each leader pid (which is also
    /// its process group id).
    pub fn sample(&mut self, leaders: &[i32]) -> HashMap<i32, TreeUsage> {
        let now = Instant::now();
        let table = read_table();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (&pid, sample) in &table {
            children.entry(sample.ppid).or_default().push(pid);
        }
        let mut result = HashMap::with_capacity(leaders.len());
        let mut previous = HashMap::with_capacity(leaders.len());
        for &leader in leaders {
            let members = tree_members(leader, &table, &children);
            let (mut ticks, mut pages) = (0u64, 0u64);
            for pid in &members {
                if let Some(sample) = table.get(pid) {
                    ticks += sample.cpu_ticks;
                    pages += sample.rss_pages;
                }
            }
            let cpu_percent = match self.previous.get(&leader) {
                Some(&(at, before)) if ticks >= before => {
                    let wall = now.duration_since(at).as_secs_f64();
                    if wall > 0.0 {
                        (ticks - before) as f64 / self.ticks_per_second / wall * 100.0
                    } else {
                        0.0
                    }
                }
                _ => 0.0,
            };
            previous.insert(leader, (now, ticks));
            result.insert(
                leader,
                TreeUsage {
                    cpu_percent: (cpu_percent * 10.0).round() / 10.0,
                    memory_bytes: pages * self.page_size,
                },
            );
        }
        self.previous = previous;
        result
    }
}

/// The leader, its descendants, and any other member of its process group.
fn tree_members(
    leader: i32,
    table: &HashMap<i32, ProcSample>,
    children: &HashMap<i32, Vec<i32>>,
) -> Vec<i32> {
    let mut members = Vec::new();
    let mut stack = vec![leader];
    while let Some(pid) = stack.pop() {
        if members.contains(&pid) {
            continue;
        }
        if table.contains_key(&pid) {
            members.push(pid);
        }
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids);
        }
    }
    for (&pid, sample) in table {
        if sample.pgrp == leader && !members.contains(&pid) {
            members.push(pid);
        }
    }
    members
}

fn read_table() -> HashMap<i32, ProcSample> {
    let mut table = HashMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return table;
    };
    for process in all.flatten() {
        // A process can exit between the directory listing and the read; skip it.
        if let Ok(stat) = process.stat() {
            table.insert(
                stat.pid,
                ProcSample {
                    ppid: stat.ppid,
                    pgrp: stat.pgrp,
                    cpu_ticks: stat.utime + stat.stime,
                    rss_pages: stat.rss,
                },
            );
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_includes_descendants_and_group_members() {
        let sample = |ppid, pgrp| ProcSample {
            ppid,
            pgrp,
            cpu_ticks: 1,
            rss_pages: 1,
        };
        let table = HashMap::from([
            (10, sample(1, 10)),
            (11, sample(10, 10)),
            (12, sample(11, 12)), // a grandchild in its own group
            (13, sample(1, 10)),  // an orphan re-parented to init, still in the group
            (20, sample(1, 20)),  // someone else
        ]);
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (&pid, s) in &table {
            children.entry(s.ppid).or_default().push(pid);
        }
        let mut members = tree_members(10, &table, &children);
        members.sort();
        assert_eq!(members, vec![10, 11, 12, 13]);
    }

    #[test]
    fn sampling_this_process_reports_memory() {
        let mut sampler = Sampler::new();
        let me = std::process::id() as i32;
        let usage = sampler.sample(&[me]);
        assert!(usage[&me].memory_bytes > 0);
    }
}
