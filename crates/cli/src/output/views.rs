//! Snapshots of what users see (insta), so a change to it shows up in review:
//! `fleet list`, `fleet status <stage>` with a host out of reach, the deploy summary
//! and the release listing. The data is built here: no pid, time or path varies.

use fleet_proto::agent::v1 as pb;
use fleet_remote::deploy::{HostReleases, HostResult, HostSummary, ListKind, Releases};
use fleet_remote::stage::HostOutcome;

use super::{deploy_summary, fleet_status_text, process_table, releases_table};

/// A minute past the test's epoch.
const NOW_MS: u64 = 1_764_979_260_000;

fn instance(id: u32, name: &str, instance: u32, status: pb::ProcessStatus) -> pb::ProcessInfo {
    let online = status == pb::ProcessStatus::Online;
    pb::ProcessInfo {
        id,
        name: name.into(),
        namespace: "default".into(),
        instance,
        pid: online.then_some(4100 + id),
        status: status as i32,
        restarts: id,
        uptime_ms: online.then_some(90_061_000),
        cpu_percent: if online { 1.25 } else { 0.0 },
        memory_bytes: if online { 52_428_800 } else { 0 },
        exec_mode: pb::ExecMode::Cluster as i32,
        script: "/srv/app/releases/20261206T001500.000Z-abc1234/server.js".into(),
        ..Default::default()
    }
}

fn apps() -> Vec<pb::ProcessInfo> {
    vec![
        instance(0, "api", 0, pb::ProcessStatus::Online),
        instance(1, "api", 1, pb::ProcessStatus::Online),
        instance(2, "worker", 0, pb::ProcessStatus::Errored),
        instance(3, "cron", 0, pb::ProcessStatus::Stopped),
    ]
}

#[test]
fn list() {
    insta::assert_snapshot!(process_table(&apps()));
}

#[test]
fn list_with_no_app() {
    insta::assert_snapshot!(process_table(&[]));
}

fn host_metrics() -> fleet_proto::agent::v1::HostMetrics {
    use fleet_proto::agent::v1::{DiskUsage, HostMetrics};
    const GB: u64 = 1 << 30;
    HostMetrics {
        at_unix_ms: NOW_MS,
        cpus: 4,
        cpu_percent: 37.25,
        load1: 1.5,
        load5: 0.75,
        load15: 0.5,
        memory_total_bytes: 16 * GB,
        memory_available_bytes: 12 * GB,
        swap_total_bytes: 0,
        swap_free_bytes: 0,
        disks: vec![
            DiskUsage {
                mount_point: "/".into(),
                fs_type: "ext4".into(),
                total_bytes: 100 * GB,
                available_bytes: 60 * GB,
                used_bytes: 35 * GB,
                paths: vec!["/root/.fleet".into()],
            },
            DiskUsage {
                mount_point: "/srv".into(),
                fs_type: "xfs".into(),
                total_bytes: 500 * GB,
                available_bytes: 25 * GB,
                used_bytes: 475 * GB,
                paths: vec!["/srv/api/current".into()],
            },
        ],
        uptime_ms: 3 * 86_400_000,
    }
}

#[test]
fn status_of_a_stage_with_a_host_out_of_reach() {
    let with_host = |host: &str| {
        let mut apps = apps();
        for app in &mut apps {
            app.host = host.into();
        }
        apps
    };
    let outcomes = vec![
        HostOutcome {
            stale: false,
            host: "web1".into(),
            result: Ok(with_host("web1")),
            last_seen_unix_ms: None,
            metrics: None,
        },
        HostOutcome {
            stale: false,
            host: "web2".into(),
            result: Ok(Vec::new()),
            last_seen_unix_ms: None,
            metrics: Some(host_metrics()),
        },
        HostOutcome {
            stale: false,
            host: "web3".into(),
            result: Err("no session".into()),
            last_seen_unix_ms: Some(NOW_MS - 95_000),
            metrics: None,
        },
    ];
    insta::assert_snapshot!(fleet_status_text(&outcomes, NOW_MS));
}

#[test]
fn status_from_a_controller_whose_store_is_away_says_it_is_stale() {
    let outcome = |stale| HostOutcome {
        stale,
        host: "web1".into(),
        result: Err("no session".into()),
        last_seen_unix_ms: Some(NOW_MS - 5_000),
        metrics: None,
    };
    let text = fleet_status_text(&[outcome(true)], NOW_MS);
    assert!(
        text.starts_with("stale: the controller's store is unavailable"),
        "{text}"
    );
    assert!(!fleet_status_text(&[outcome(false)], NOW_MS).contains("stale"));
}

fn summary(host: &str, result: HostResult, step: &str, error: Option<&str>) -> HostSummary {
    HostSummary {
        host: host.into(),
        result,
        step: step.into(),
        error: error.map(str::to_string),
        release: Some("20261206T001500.000Z-abc1234".into()),
        previous: Some("20261205T120000.000Z-0ff1ce0".into()),
        duration_ms: 1234,
        steps: Vec::new(),
    }
}

#[test]
fn deploy_summary_with_a_failed_host_and_a_rollback() {
    let hosts = vec![
        summary("web1", HostResult::RolledBack, "roll back", None),
        summary(
            "web2",
            HostResult::Failed,
            "post-deploy",
            Some("npm ERR! missing script: migrate (exit status 1)"),
        ),
        HostSummary::skipped("web3"),
    ];
    insta::assert_snapshot!(deploy_summary(&hosts).to_string());
}

#[test]
fn release_listing_marks_current_previous_and_the_lock() {
    let releases = vec![
        (
            "20261204T090000.000Z-1111111".to_string(),
            "1111111aaaa".to_string(),
        ),
        (
            "20261205T120000.000Z-0ff1ce0".to_string(),
            "0ff1ce0bbbb".to_string(),
        ),
        (
            "20261206T001500.000Z-abc1234".to_string(),
            "abc1234cccc".to_string(),
        ),
    ];
    let state = HostReleases {
        current: Some(releases[2].0.clone()),
        previous: Some(releases[1].0.clone()),
        releases,
        lock: Some("alice@laptop".into()),
    };
    let listing = Releases {
        kind: ListKind::All,
        hosts: vec![("web1".into(), Ok(state))],
    };
    insta::assert_snapshot!(releases_table(&listing).to_string());
}
