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
