//! The deploy plan without SSH: batches, canary, `max_fail`, rollback decisions,
//! interrupts in every phase, undo and pruning.

use super::*;
use fleet_config::Batch;

fn policy(canary: bool, batch_size: usize, max_fail: u32) -> Policy {
    Policy {
        canary,
        batch_size,
        max_fail,
        no_rollback: false,
    }
}

/// Runs a whole rollout: `failed(batch)` says how many hosts of each batch fail, and
/// `interrupt_after` interrupts once that many batches are done.
fn roll(
    plan: &mut Plan,
    failed: impl Fn(&[usize]) -> u32,
    interrupt_after: Option<usize>,
) -> (Vec<Vec<usize>>, Next) {
    let mut ran = Vec::new();
    loop {
        let interrupted = interrupt_after.is_some_and(|n| ran.len() >= n);
        match plan.next(interrupted) {
            Next::Batch(batch) => {
                let f = failed(&batch);
                ran.push(batch);
                let interrupted = interrupt_after.is_some_and(|n| ran.len() >= n);
                plan.batch_done(f, interrupted);
            }
            finish => return (ran, finish),
        }
    }
}

#[test]
fn batches_by_count() {
    let plan = Plan::new(5, policy(false, Batch::Count(2).size(5), 0));
    assert_eq!(plan.batches(), &[vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn batches_by_percentage_round_up() {
    // 30% of 5 hosts is 1.5: two per batch.
    let plan = Plan::new(5, policy(false, Batch::Percent(30).size(5), 0));
    assert_eq!(plan.batches(), &[vec![0, 1], vec![2, 3], vec![4]]);
    let plan = Plan::new(3, policy(false, Batch::Percent(100).size(3), 0));
    assert_eq!(plan.batches(), &[vec![0, 1, 2]]);
    let plan = Plan::new(20, policy(false, Batch::Percent(1).size(20), 0));
    assert_eq!(plan.batches().len(), 20);
}

#[test]
fn the_canary_goes_first_alone() {
    let plan = Plan::new(5, policy(true, 2, 0));
    assert_eq!(plan.batches(), &[vec![0], vec![1, 2], vec![3, 4]]);
    // A single host is its own canary: no empty batch.
    let plan = Plan::new(1, policy(true, 2, 0));
    assert_eq!(plan.batches(), &[vec![0]]);
}

#[test]
fn a_rollout_without_failures_runs_every_batch_and_keeps_the_release() {
    let mut plan = Plan::new(4, policy(true, 2, 0));
    let (ran, finish) = roll(&mut plan, |_| 0, None);
    assert_eq!(ran, vec![vec![0], vec![1, 2], vec![3]]);
    assert_eq!(
        finish,
        Next::Finish {
            skipped: vec![],
            roll_back: false
        }
    );
}

#[test]
fn a_failed_canary_stops_the_deploy_even_when_max_fail_allows_more() {
    let mut plan = Plan::new(4, policy(true, 1, 3));
    let (ran, finish) = roll(&mut plan, |batch| u32::from(batch == [0]), None);
    assert_eq!(ran, vec![vec![0]]);
    assert_eq!(
        finish,
        Next::Finish {
            skipped: vec![1, 2, 3],
            roll_back: true
        }
    );
}

#[test]
fn failures_beyond_max_fail_stop_new_batches_and_roll_back() {
    // max_fail = 1: the first failure is tolerated, the second stops the rollout.
    let mut plan = Plan::new(5, policy(false, 1, 1));
    let (ran, finish) = roll(&mut plan, |batch| u32::from(batch[0] % 2 == 1), None);
    assert_eq!(ran, vec![vec![0], vec![1], vec![2], vec![3]]);
    assert_eq!(
        finish,
        Next::Finish {
            skipped: vec![4],
            roll_back: true
        }
    );
}

#[test]
fn failures_within_max_fail_finish_without_rollback() {
    let mut plan = Plan::new(3, policy(false, 1, 1));
    let (ran, finish) = roll(&mut plan, |batch| u32::from(batch == [1]), None);
    assert_eq!(ran.len(), 3);
    assert_eq!(
        finish,
        Next::Finish {
            skipped: vec![],
            roll_back: false
        }
    );
}

#[test]
fn no_rollback_leaves_switched_hosts_on_the_new_release() {
    let mut plan = Plan::new(
        3,
        Policy {
            no_rollback: true,
            ..policy(false, 1, 0)
        },
    );
    let (ran, finish) = roll(&mut plan, |batch| u32::from(batch == [1]), None);
    assert_eq!(ran, vec![vec![0], vec![1]]);
    assert_eq!(
        finish,
        Next::Finish {
            skipped: vec![2],
            roll_back: false
        }
    );
}

#[test]
fn an_interrupt_between_batches_skips_the_rest_and_rolls_back() {
    let mut plan = Plan::new(4, policy(false, 1, 0));
    let (ran, finish) = roll(&mut plan, |_| 0, Some(2));
    assert_eq!(ran, vec![vec![0], vec![1]]);
    assert_eq!(
        finish,
        Next::Finish {
            skipped: vec![2, 3],
            roll_back: true
        }
    );
}

#[test]
fn an_interrupt_before_the_first_batch_attempts_nothing() {
    let mut plan = Plan::new(2, policy(false, 1, 0));
    assert_eq!(
        plan.next(true),
        Next::Finish {
            skipped: vec![0, 1],
            roll_back: true
        }
    );
}

fn walk(payload: Payload, hooks: Hooks, lock: LockState) -> Vec<HostNext> {
    let mut walk = HostWalk::new(payload, hooks, lock);
    let mut steps = Vec::new();
    loop {
        let next = walk.next(false, false);
        steps.push(next);
        match next {
            HostNext::Run(phase) => walk.step_done(phase),
            _ => return steps,
        }
    }
}

const BOTH_HOOKS: Hooks = Hooks {
    pre_deploy: true,
    post_deploy: true,
    post_deploy_starts_apps: false,
};

#[test]
fn a_post_deploy_hook_that_starts_the_apps_replaces_fleets_reload() {
    let hooks = Hooks {
        post_deploy_starts_apps: true,
        ..BOTH_HOOKS
    };
    assert_eq!(
        walk(Payload::Clone, hooks, LockState::default()),
        vec![
            HostNext::Run(Phase::Transfer),
            HostNext::Run(Phase::PreDeploy),
            HostNext::Run(Phase::Switch),
            HostNext::Run(Phase::PostDeploy),
            HostNext::Ready
        ]
    );
}

#[test]
fn an_archive_deploy_switched_by_the_lock_reloads_then_is_ready() {
    let lock = LockState {
        transferred: true,
        switch_done: true,
    };
    assert_eq!(
        walk(Payload::Archive, Hooks::default(), lock),
        vec![HostNext::Run(Phase::Reload), HostNext::Ready]
    );
}

#[test]
fn a_pre_deploy_hook_runs_before_the_switch() {
    let lock = LockState {
        transferred: true,
        switch_done: false,
    };
    assert_eq!(
        walk(Payload::Archive, BOTH_HOOKS, lock),
        vec![
            HostNext::Run(Phase::PreDeploy),
            HostNext::Run(Phase::Switch),
            HostNext::Run(Phase::Reload),
            HostNext::Run(Phase::PostDeploy),
            HostNext::Ready
        ]
    );
}

#[test]
fn the_clone_strategy_transfers_after_the_lock() {
    assert_eq!(
        walk(Payload::Clone, Hooks::default(), LockState::default()),
        vec![
            HostNext::Run(Phase::Transfer),
            HostNext::Run(Phase::Switch),
            HostNext::Run(Phase::Reload),
            HostNext::Ready
        ]
    );
}

#[test]
fn a_revert_runs_no_hooks() {
    let lock = LockState {
        transferred: false,
        switch_done: true,
    };
    assert_eq!(
        walk(Payload::Existing { present: true }, BOTH_HOOKS, lock),
        vec![HostNext::Run(Phase::Reload), HostNext::Ready]
    );
    assert_eq!(
        walk(Payload::Existing { present: false }, BOTH_HOOKS, lock),
        vec![HostNext::Stop {
            at: "switch",
            why: Stop::MissingRelease
        }]
    );
}

/// Interrupts the walk before its n-th step; returns where it stopped and the undo.
fn interrupted_at(n: usize) -> (HostNext, Undo) {
    let lock = LockState {
        transferred: true,
        switch_done: false,
    };
    let mut walk = HostWalk::new(Payload::Archive, BOTH_HOOKS, lock);
    for _ in 0..n {
        match walk.next(false, false) {
            HostNext::Run(phase) => walk.step_done(phase),
            other => panic!("walk ended early: {other:?}"),
        }
    }
    let stop = walk.next(true, false);
    (stop, walk.undo(true))
}

#[test]
fn an_interrupt_in_each_phase_stops_there_and_undoes_what_was_done() {
    let interrupted = |at| HostNext::Stop {
        at,
        why: Stop::Interrupted,
    };
    assert_eq!(
        interrupted_at(0),
        (interrupted("pre-deploy"), Undo::Discard)
    );
    assert_eq!(interrupted_at(1), (interrupted("switch"), Undo::Discard));
    assert_eq!(interrupted_at(2), (interrupted("reload"), Undo::SwitchBack));
    assert_eq!(
        interrupted_at(3),
        (interrupted("post-deploy"), Undo::SwitchBack)
    );
    assert_eq!(interrupted_at(4), (interrupted("health"), Undo::SwitchBack));
}

#[test]
fn a_lost_lock_stops_the_host_like_an_interrupt() {
    let mut walk = HostWalk::new(
        Payload::Archive,
        Hooks::default(),
        LockState {
            transferred: true,
            switch_done: true,
        },
    );
    assert_eq!(
        walk.next(false, true),
        HostNext::Stop {
            at: "reload",
            why: Stop::LockLost
        }
    );
    assert_eq!(walk.undo(true), Undo::SwitchBack);
}

#[test]
fn a_clone_transfer_is_not_interrupted_once_locked() {
    let mut walk = HostWalk::new(Payload::Clone, Hooks::default(), LockState::default());
    assert_eq!(walk.next(true, false), HostNext::Run(Phase::Transfer));
    assert_eq!(
        walk.next(true, false),
        HostNext::Stop {
            at: "switch",
            why: Stop::Interrupted
        }
    );
}

#[test]
fn undo_depends_on_the_switch_and_a_previous_release() {
    assert_eq!(undo(true, false, true), Undo::Discard);
    assert_eq!(undo(false, false, true), Undo::Nothing);
    assert_eq!(undo(true, true, true), Undo::SwitchBack);
    assert_eq!(undo(false, true, true), Undo::SwitchBack);
    assert_eq!(undo(true, true, false), Undo::StayOnNew);
}

#[test]
fn pruning_keeps_the_new_and_the_previous_release() {
    let releases: Vec<String> = ["r1", "r2", "r3"].map(String::from).to_vec();
    assert_eq!(prune(&releases, "r4", Some("r3"), 2), vec!["r1", "r2"]);
    // The previous release is kept even when it is older than the ones kept.
    assert_eq!(prune(&releases, "r4", Some("r1"), 2), vec!["r2"]);
    assert!(prune(&releases, "r4", Some("r3"), 5).is_empty());
    assert_eq!(prune(&releases, "r0", None, 1), vec!["r1", "r2"]);
}
