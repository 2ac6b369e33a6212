//! The agent's operations through its gRPC API, in-process: real child processes
//! started, listed, reloaded, scaled, stopped and deleted.

use fleet_proto::agent::v1 as pb;
use pb::ProcessStatus::{Online, Stopped};

use crate::harness::{Agent, apps};

const SLEEPER: &str = r#"
[[apps]]
name = "sleeper"
script = "/bin/sleep"
args = ["3600"]
instances = 2
kill_timeout = "1s"
"#;

fn pids(list: &[pb::ProcessInfo]) -> Vec<Option<u32>> {
    list.iter().map(|p| p.pid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_list_stop_and_delete_run_real_processes() {
    let mut agent = Agent::start().await;
    let apps = apps(agent.home.path(), SLEEPER);
    let started = agent
        .client
        .start(pb::StartRequest {
            apps,
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.processes.len(), 2);
    let list = agent
        .wait_until("both online", |l| {
            l.len() == 2 && l.iter().all(|p| p.status() == Online)
        })
        .await;
    for pid in pids(&list) {
        let pid = pid.expect("a pid") as i32;
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok());
    }
    let stopped = agent
        .client
        .stop(pb::TargetRequest {
            targets: vec!["sleeper".into()],
        })
        .await
        .expect("stop")
        .into_inner();
    assert!(stopped.processes.iter().all(|p| p.status() == Stopped));
    agent
        .client
        .delete(pb::TargetRequest {
            targets: vec!["all".into()],
        })
        .await
        .expect("delete");
    agent.wait_until("nothing left", |l| l.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_fork_instances_and_scale_adds_one() {
    let mut agent = Agent::start().await;
    let apps = apps(agent.home.path(), SLEEPER);
    agent
        .client
        .start(pb::StartRequest {
            apps,
            ..Default::default()
        })
        .await
        .expect("start");
    let before = agent
        .wait_until("both online", |l| {
            l.len() == 2 && l.iter().all(|p| p.status() == Online)
        })
        .await;
    let reloaded = agent
        .client
        .reload(fleet_proto::ops::reload_request(vec!["sleeper".into()]))
        .await
        .expect("reload")
        .into_inner();
    assert_eq!(reloaded.processes.len(), 2);
    let after = agent
        .wait_until("both online again", |l| {
            l.len() == 2 && l.iter().all(|p| p.status() == Online)
        })
        .await;
    for (old, new) in pids(&before).iter().zip(pids(&after)) {
        assert_ne!(*old, new, "a fork-mode reload restarts the process");
    }
    agent
        .client
        .scale(pb::ScaleRequest {
            app: "sleeper".into(),
            count: "+1".into(),
        })
        .await
        .expect("scale");
    agent
        .wait_until("three online", |l| {
            l.len() == 3 && l.iter().all(|p| p.status() == Online)
        })
        .await;
    let refused = agent
        .client
        .scale(pb::ScaleRequest {
            app: "sleeper".into(),
            count: "many".into(),
        })
        .await
        .expect_err("a count that is not a number");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    agent.stop().await;
}

/// A client need not use the config reader: whatever it sends is checked at the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_and_counts_are_checked_where_they_arrive() {
    let mut agent = Agent::start().await;
    let good = apps(agent.home.path(), SLEEPER).remove(0);
    let spec: serde_json::Value = serde_json::from_str(&good.json).unwrap();
    let refused = |field: &str, value: serde_json::Value| {
        let mut spec = spec.clone();
        spec[field] = value;
        pb::AppConfig {
            json: spec.to_string(),
        }
    };
    for (app, expected) in [
        (refused("name", "line\nbreak".into()), "name"),
        (refused("name", "all".into()), "name"),
        (
            refused("instances", serde_json::json!({"count": 100000})),
            "instances",
        ),
        (refused("cwd", "relative/dir".into()), "cwd"),
        (refused("kill_signal", "SIGNOPE".into()), "kill_signal"),
    ] {
        let status = agent
            .client
            .start(pb::StartRequest {
                apps: vec![app],
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{}", status.message());
    }
    assert!(agent.list().await.is_empty(), "nothing started");

    agent
        .client
        .start(pb::StartRequest {
            apps: vec![good],
            ..Default::default()
        })
        .await
        .expect("start");
    let started = std::time::Instant::now();
    for count in ["12000", "+4294967295", "-99999", "two"] {
        let status = agent
            .client
            .scale(pb::ScaleRequest {
                app: "sleeper".into(),
                count: count.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{count}: {status:?}"
        );
    }
    let status = agent
        .client
        .scale(pb::ScaleRequest {
            app: "sleeper".into(),
            count: "+1023".into(),
        })
        .await
        .expect_err("over the cap once added");
    assert!(
        status.message().contains("at most 1024"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(fleet_proto::ops::MAX_INSTANCES, fleet_config::MAX_INSTANCES);
    let _ = agent.stop().await;
}
