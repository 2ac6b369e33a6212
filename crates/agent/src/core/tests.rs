//! Tests of `core`.

use super::*;
use tokio::time::advance;

fn policy() -> Policy {
    Policy {
        autorestart: true,
        stop_exit_codes: vec![],
        min_uptime: Duration::from_millis(1000),
        max_restarts: 16,
        restart_delay: Duration::ZERO,
        exp_backoff: None,
        kill_timeout: Duration::from_millis(1600),
        needs_ready: false,
        listen_timeout: Duration::from_millis(3000),
    }
}

/// Starts an instance and reports it spawned, as the shell would.
fn online(policy: Policy) -> Instance {
    let mut instance = Instance::new(policy, Instant::now());
    assert_eq!(
        instance.handle(Input::Start, Instant::now()),
        vec![Action::Spawn]
    );
    instance.handle(Input::Spawned, Instant::now());
    instance
}

fn crash(instance: &mut Instance, code: i32) -> Vec<Action> {
    instance.handle(
        Input::Exited {
            exit: Exit::Code(code),
            group_empty: true,
        },
        Instant::now(),
    )
}

fn scheduled(actions: &[Action]) -> Option<(TimerToken, Duration)> {
    actions.iter().find_map(|a| match a {
        Action::Schedule { token, after } => Some((*token, *after)),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn start_of_a_stopped_instance_is_not_a_restart() {
    let instance = online(policy());
    assert_eq!(instance.status, Status::Online);
    assert_eq!(instance.restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn instant_crash_loop_ends_errored_after_max_restarts() {
    let mut instance = online(policy());
    let mut spawns = 0;
    loop {
        advance(Duration::from_millis(5)).await;
        let actions = crash(&mut instance, 1);
        if instance.status == Status::Errored {
            assert!(actions.is_empty());
            break;
        }
        assert_eq!(actions, vec![Action::Spawn]);
        instance.handle(Input::Spawned, Instant::now());
        spawns += 1;
    }
    assert_eq!(spawns, 15, "the 16th unstable exit is the last");
    assert_eq!(instance.unstable_restarts, 16);
    assert_eq!(instance.restarts, 15);
}

#[tokio::test(start_paused = true)]
async fn crashes_after_min_uptime_restart_forever() {
    let mut instance = online(policy());
    for _ in 0..40 {
        advance(Duration::from_millis(1500)).await;
        assert_eq!(crash(&mut instance, 1), vec![Action::Spawn]);
        instance.handle(Input::Spawned, Instant::now());
    }
    assert_eq!(instance.status, Status::Online);
    assert_eq!(instance.unstable_restarts, 0);
    assert_eq!(instance.restarts, 40);
}

#[tokio::test(start_paused = true)]
async fn stop_exit_codes_and_no_autorestart_leave_it_stopped() {
    let mut p = policy();
    p.stop_exit_codes = vec![42];
    let mut instance = online(p.clone());
    assert!(crash(&mut instance, 42).is_empty());
    assert_eq!(instance.status, Status::Stopped);

    let mut instance = online(p);
    assert_eq!(crash(&mut instance, 3), vec![Action::Spawn]);

    let mut p = policy();
    p.autorestart = false;
    let mut instance = online(p);
    assert!(crash(&mut instance, 0).is_empty());
    assert_eq!(instance.status, Status::Stopped);
    assert_eq!(instance.restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn restart_delay_waits_then_spawns() {
    let mut p = policy();
    p.restart_delay = Duration::from_millis(5000);
    let mut instance = online(p);
    advance(Duration::from_millis(2000)).await;
    let actions = crash(&mut instance, 1);
    let (token, after) = scheduled(&actions).expect("a restart timer");
    assert_eq!(after, Duration::from_millis(5000));
    assert_eq!(instance.status, Status::WaitingRestart);
    assert_eq!(instance.restarts, 0, "not restarted yet");
    advance(after).await;
    assert_eq!(
        instance.handle(Input::Timer(token), Instant::now()),
        vec![Action::Spawn]
    );
    assert_eq!(instance.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_by_half_caps_and_resets_after_a_stable_run() {
    let mut p = policy();
    p.exp_backoff = Some(Duration::from_millis(100));
    p.max_restarts = 1000;
    let mut instance = online(p);
    let mut delays = Vec::new();
    for _ in 0..16 {
        advance(Duration::from_millis(10)).await;
        let actions = crash(&mut instance, 1);
        let (token, after) = scheduled(&actions).expect("a backoff timer");
        delays.push(after.as_millis());
        advance(after).await;
        instance.handle(Input::Timer(token), Instant::now());
        instance.handle(Input::Spawned, Instant::now());
    }
    assert_eq!(&delays[..5], &[100, 150, 225, 337, 505]);
    assert_eq!(*delays.last().unwrap(), 15_000, "capped at 15 s");

    // Online for 30 s: the reset timer clears the backoff.
    let reset = instance
        .timer
        .filter(|t| t.kind == TimerKind::BackoffReset)
        .expect("a reset timer while online");
    advance(BACKOFF_RESET_AFTER).await;
    instance.handle(Input::Timer(reset), Instant::now());
    assert_eq!(instance.prev_restart_delay, Duration::ZERO);
    let (_, after) = scheduled(&crash(&mut instance, 1)).unwrap();
    assert_eq!(after, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn stop_escalates_to_sigkill_after_kill_timeout() {
    let mut instance = online(policy());
    let actions = instance.handle(Input::Stop, Instant::now());
    assert_eq!(actions[0], Action::SignalGroup);
    let (token, after) = scheduled(&actions).unwrap();
    assert_eq!(after, Duration::from_millis(1600));
    assert_eq!(instance.status, Status::Stopping);
    advance(after).await;
    assert_eq!(
        instance.handle(Input::Timer(token), Instant::now()),
        vec![Action::KillGroup]
    );
    assert_eq!(
        instance.status,
        Status::Stopping,
        "until the leader is reaped"
    );
    instance.handle(
        Input::Exited {
            exit: Exit::Signal(9),
            group_empty: true,
        },
        Instant::now(),
    );
    assert_eq!(instance.status, Status::Stopped);
    assert_eq!(instance.restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn stop_waits_for_children_that_outlive_the_leader() {
    let mut instance = online(policy());
    let actions = instance.handle(Input::Stop, Instant::now());
    let (token, _) = scheduled(&actions).unwrap();
    let actions = instance.handle(
        Input::Exited {
            exit: Exit::Code(0),
            group_empty: false,
        },
        Instant::now(),
    );
    assert_eq!(actions, vec![Action::WatchGroup]);
    assert_eq!(instance.status, Status::Stopping);
    advance(Duration::from_millis(1600)).await;
    assert_eq!(
        instance.handle(Input::Timer(token), Instant::now()),
        vec![Action::KillGroup, Action::WatchGroup]
    );
    instance.handle(Input::GroupGone, Instant::now());
    assert_eq!(instance.status, Status::Stopped);
}

#[tokio::test(start_paused = true)]
async fn crash_with_leftover_children_kills_the_group_before_restarting() {
    let mut instance = online(policy());
    advance(Duration::from_secs(5)).await;
    let actions = instance.handle(
        Input::Exited {
            exit: Exit::Signal(11),
            group_empty: false,
        },
        Instant::now(),
    );
    assert_eq!(actions, vec![Action::KillGroup, Action::Spawn]);
}

#[tokio::test(start_paused = true)]
async fn restart_counts_and_opens_a_new_window() {
    let mut instance = online(policy());
    instance.handle(Input::Stop, Instant::now());
    instance.handle(
        Input::Exited {
            exit: Exit::Signal(2),
            group_empty: true,
        },
        Instant::now(),
    );
    assert_eq!(instance.status, Status::Stopped);
    // Starting a stopped instance is not a restart; restarting a running one is.
    assert_eq!(
        instance.handle(Input::Start, Instant::now()),
        vec![Action::Spawn]
    );
    instance.handle(Input::Spawned, Instant::now());
    assert_eq!(instance.restarts, 0);
    let actions = instance.handle(Input::Restart, Instant::now());
    assert_eq!(actions[0], Action::SignalGroup);
    let actions = instance.handle(
        Input::Exited {
            exit: Exit::Signal(2),
            group_empty: true,
        },
        Instant::now(),
    );
    assert_eq!(actions, vec![Action::Spawn]);
    assert_eq!(instance.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn delete_of_a_running_instance_removes_it_after_the_stop() {
    let mut instance = online(policy());
    instance.handle(Input::Delete, Instant::now());
    let actions = instance.handle(
        Input::Exited {
            exit: Exit::Code(0),
            group_empty: true,
        },
        Instant::now(),
    );
    assert_eq!(actions, vec![Action::Remove]);
}

#[tokio::test(start_paused = true)]
async fn stale_timers_are_ignored_and_stop_cancels_a_pending_restart() {
    let mut p = policy();
    p.restart_delay = Duration::from_millis(500);
    let mut instance = online(p);
    advance(Duration::from_secs(2)).await;
    let (token, _) = scheduled(&crash(&mut instance, 1)).unwrap();
    instance.handle(Input::Stop, Instant::now());
    assert_eq!(instance.status, Status::Stopped);
    advance(Duration::from_secs(1)).await;
    assert!(
        instance
            .handle(Input::Timer(token), Instant::now())
            .is_empty()
    );
    assert_eq!(instance.status, Status::Stopped);
}

#[tokio::test(start_paused = true)]
async fn reset_zeroes_counters() {
    let mut instance = online(policy());
    for _ in 0..3 {
        advance(Duration::from_millis(10)).await;
        crash(&mut instance, 1);
        instance.handle(Input::Spawned, Instant::now());
    }
    assert_eq!(instance.restarts, 3);
    instance.handle(Input::Reset, Instant::now());
    assert_eq!((instance.restarts, instance.unstable_restarts), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_needs_readiness_is_launching_until_ready() {
    let mut p = policy();
    p.needs_ready = true;
    let mut instance = Instance::new(p.clone(), Instant::now());
    instance.handle(Input::Start, Instant::now());
    let actions = instance.handle(Input::Spawned, Instant::now());
    let (_, after) = scheduled(&actions).expect("a ready timeout");
    assert_eq!(after, Duration::from_millis(3000));
    assert_eq!(instance.status, Status::Launching);
    instance.handle(Input::Ready, Instant::now());
    assert_eq!(instance.status, Status::Online);
    assert!(!instance.ready_timed_out);

    // Never ready: online after listen_timeout, as PM2, but flagged.
    let mut instance = Instance::new(p, Instant::now());
    instance.handle(Input::Start, Instant::now());
    let (token, after) = scheduled(&instance.handle(Input::Spawned, Instant::now())).unwrap();
    advance(after).await;
    instance.handle(Input::Timer(token), Instant::now());
    assert_eq!(instance.status, Status::Online);
    assert!(instance.ready_timed_out);
}

#[tokio::test(start_paused = true)]
async fn spawn_failure_is_an_unstable_exit() {
    let mut instance = Instance::new(policy(), Instant::now());
    instance.handle(Input::Start, Instant::now());
    let actions = instance.handle(Input::SpawnFailed("no such file".into()), Instant::now());
    assert_eq!(actions, vec![Action::Spawn]);
    assert_eq!(instance.unstable_restarts, 1);
    assert!(matches!(
        instance.last_exit,
        Some((Exit::SpawnError(_), _, _))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_restores_the_same_lifecycle_later_on_the_clock() {
    let policy = Policy {
        restart_delay: Duration::from_millis(500),
        ..policy()
    };
    let mut instance = Instance::new(policy.clone(), Instant::now());
    instance.handle(Input::Start, Instant::now());
    instance.handle(Input::Spawned, Instant::now());
    tokio::time::advance(Duration::from_millis(2000)).await;
    instance.handle(
        Input::Exited {
            exit: Exit::Code(1),
            group_empty: true,
        },
        Instant::now(),
    );
    assert_eq!(instance.status, Status::WaitingRestart);
    let taken = Instant::now();
    let snapshot = instance.snapshot(taken);
    assert_eq!(snapshot.restart_in_ms, Some(500));
    // Through JSON, as the handoff document carries it, and restored 30 ms later.
    let json = serde_json::to_string(&snapshot).unwrap();
    tokio::time::advance(Duration::from_millis(30)).await;
    let restored = Instance::from_snapshot(serde_json::from_str(&json).unwrap(), policy, taken);
    assert_eq!(restored.snapshot(taken), snapshot);
    let timer = restored.timer.expect("the restart timer is carried");
    let mut restored = restored;
    let actions = restored.handle(Input::Timer(timer), Instant::now());
    assert_eq!(actions, vec![Action::Spawn]);
    assert_eq!(restored.restarts, instance.restarts + 1);
}
