//! The decisions of a deploy, as pure functions of what happened (the way the agent's
//! `core` decides an instance's lifecycle): which hosts go in which batch, when a
//! rollout stops (canary failed, more than `max_fail` failures, an interrupt), whether
//! the hosts already switched go back, which step a host takes next and how a host is
//! undone after a failure, and which releases a host prunes. No I/O: the executor
//! (`host`, `rollout`) carries the decisions out over SSH and reports back.

use std::collections::VecDeque;

/// The stage's rollout settings.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// One host first, alone; a failure there stops the deploy.
    pub canary: bool,
    /// Hosts per batch after the canary (at least 1).
    pub batch_size: usize,
    /// Failed hosts tolerated before no new batch starts.
    pub max_fail: u32,
    /// Leave switched hosts on the new release when the rollout stops.
    pub no_rollback: bool,
}

/// What the rollout does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run these hosts (indices into the stage's host list) up to health, together.
    Batch(Vec<usize>),
    /// No more batches: `skipped` were never attempted, and the hosts that got to
    /// health either go back (`roll_back`) or record the release and unlock.
    Finish {
        skipped: Vec<usize>,
        roll_back: bool,
    },
}

/// A rollout over `hosts` hosts in batches.
#[derive(Debug)]
pub struct Plan {
    policy: Policy,
    batches: Vec<Vec<usize>>,
    /// The next batch to hand out.
    next: usize,
    failures: u32,
    stopped: bool,
}

impl Plan {
    pub fn new(hosts: usize, policy: Policy) -> Plan {
        let all: Vec<usize> = (0..hosts).collect();
        let mut batches = Vec::new();
        let mut rest: &[usize] = &all;
        if policy.canary && hosts > 1 {
            batches.push(vec![0]);
            rest = &all[1..];
        }
        for chunk in rest.chunks(policy.batch_size.max(1)) {
            batches.push(chunk.to_vec());
        }
        Plan {
            policy,
            batches,
            next: 0,
            failures: 0,
            stopped: false,
        }
    }

    /// The batches, in order (for display and tests).
    pub fn batches(&self) -> &[Vec<usize>] {
        &self.batches
    }

    /// The next batch, or the end. `interrupted`: Ctrl-C (or a cancelled submission)
    /// was seen; no new batch starts after it.
    pub fn next(&mut self, interrupted: bool) -> Next {
        self.stopped |= interrupted;
        if self.stopped || self.next >= self.batches.len() {
            let skipped = self.batches[self.next.min(self.batches.len())..].concat();
            self.next = self.batches.len();
            return Next::Finish {
                skipped,
                roll_back: self.stopped && !self.policy.no_rollback,
            };
        }
        let batch = self.batches[self.next].clone();
        self.next += 1;
        Next::Batch(batch)
    }

    /// The batch handed out last ended with `failed` of its hosts failed.
    pub fn batch_done(&mut self, failed: u32, interrupted: bool) {
        self.failures += failed;
        let canary_failed = self.policy.canary && self.next == 1 && self.failures > 0;
        if self.failures > self.policy.max_fail || canary_failed || interrupted {
            self.stopped = true;
        }
    }
}

/// What a host is switched to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A new release, unpacked by the lock's exec (archive strategy).
    Archive,
    /// A new release cloned on the host after the lock (clone strategy).
    Clone,
    /// An existing release (`revert`); `present`: the host has it.
    Existing { present: bool },
}

impl Payload {
    fn is_new(self) -> bool {
        !matches!(self, Payload::Existing { .. })
    }
}

/// The steps of one host after its lock, in order. Each step establishes something
/// that the undo must take back: `Transfer` a release directory (removed again unless
/// switched), `Switch` the `current` link (switched back, and the previous release
/// reloaded), `Reload` the agent's apps (the previous release's apps reloaded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Clone strategy: export the commit into the release directory.
    Transfer,
    PreDeploy,
    Switch,
    /// The agent reloads the release's config, then every instance must be online.
    Reload,
    PostDeploy,
}

impl Phase {
    /// The step's name, in progress and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Transfer => "transfer",
            Phase::PreDeploy => "pre-deploy",
            Phase::Switch => "switch",
            Phase::Reload => "reload",
            Phase::PostDeploy => "post-deploy",
        }
    }

    /// Whether the deploy must still hold the host's lock (and not be interrupted)
    /// before this step starts. A clone's transfer follows the lock at once.
    fn checks_lock(self) -> bool {
        self != Phase::Transfer
    }
}

/// Why a host stops before its next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Interrupted,
    LockLost,
    /// `revert` to a release the host does not have.
    MissingRelease,
}

/// What the host does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostNext {
    Run(Phase),
    /// Stopped before `at`.
    Stop {
        at: &'static str,
        why: Stop,
    },
    /// Up to health: waits for the rollout's decision, locked.
    Ready,
}

/// How a failed (or rolled back) host is taken back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undo {
    /// Not switched: remove the new release directory (when there is one).
    Discard,
    /// Not switched and nothing new on the host: nothing to do.
    Nothing,
    /// Switched: point `current` at the previous release and reload its apps.
    SwitchBack,
    /// Switched on a first deploy: nothing to go back to; stays on the new release.
    StayOnNew,
}

/// One host's walk through its steps after the lock.
#[derive(Debug)]
pub struct HostWalk {
    steps: VecDeque<Phase>,
    payload: Payload,
    /// `current` points at the new release (or may: an exec cut off mid-switch).
    pub switched: bool,
    done: bool,
}

/// What the lock's exec did beyond locking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    /// The release was unpacked (archive).
    pub transferred: bool,
    /// `current` was switched too (no pre-deploy hook to run in between).
    pub switch_done: bool,
}

/// The stage's hooks that run around the switch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hooks {
    pub pre_deploy: bool,
    pub post_deploy: bool,
    /// `post_deploy` (re)starts the apps itself (`pm2 reload …`), after the build it
    /// runs first: fleet's own reload would start them before that build.
    pub post_deploy_starts_apps: bool,
}

impl HostWalk {
    pub fn new(payload: Payload, hooks: Hooks, lock: LockState) -> HostWalk {
        let mut steps = VecDeque::new();
        if payload == Payload::Clone {
            steps.push_back(Phase::Transfer);
        }
        if payload.is_new() && hooks.pre_deploy {
            steps.push_back(Phase::PreDeploy);
        }
        if !lock.switch_done {
            steps.push_back(Phase::Switch);
        }
        let hook_starts_apps =
            payload.is_new() && hooks.post_deploy && hooks.post_deploy_starts_apps;
        if !hook_starts_apps {
            steps.push_back(Phase::Reload);
        }
        if payload.is_new() && hooks.post_deploy {
            steps.push_back(Phase::PostDeploy);
        }
        HostWalk {
            steps,
            payload,
            switched: lock.switch_done,
            done: false,
        }
    }

    /// The next step, given whether the deploy was interrupted or lost the lock.
    pub fn next(&mut self, interrupted: bool, lock_lost: bool) -> HostNext {
        if let Payload::Existing { present: false } = self.payload
            && !self.done
        {
            self.done = true;
            return HostNext::Stop {
                at: "switch",
                why: Stop::MissingRelease,
            };
        }
        let at = self.steps.front().copied();
        let checks = at.is_none_or(Phase::checks_lock);
        if checks && (interrupted || lock_lost) {
            self.steps.clear();
            return HostNext::Stop {
                at: at.map_or("health", Phase::name),
                why: if interrupted {
                    Stop::Interrupted
                } else {
                    Stop::LockLost
                },
            };
        }
        match self.steps.pop_front() {
            Some(phase) => HostNext::Run(phase),
            None => HostNext::Ready,
        }
    }

    /// The step handed out last succeeded.
    pub fn step_done(&mut self, phase: Phase) {
        if phase == Phase::Switch {
            self.switched = true;
        }
    }

    /// How to take the host back after a failure or a rollback decision.
    pub fn undo(&self, has_previous: bool) -> Undo {
        undo(self.payload.is_new(), self.switched, has_previous)
    }
}

/// How to take a host back: see `Undo`.
pub fn undo(new_release: bool, switched: bool, has_previous: bool) -> Undo {
    match (switched, has_previous) {
        (false, _) if new_release => Undo::Discard,
        (false, _) => Undo::Nothing,
        (true, true) => Undo::SwitchBack,
        (true, false) => Undo::StayOnNew,
    }
}

/// The releases a host deletes after deploying `new`: the oldest beyond
/// `keep` of `releases` plus `new`, never `new` itself nor `previous`.
pub fn prune(releases: &[String], new: &str, previous: Option<&str>, keep: usize) -> Vec<String> {
    let mut all: Vec<String> = releases.to_vec();
    all.push(new.to_string());
    all.sort();
    all.dedup();
    let excess = all.len().saturating_sub(keep);
    all.into_iter()
        .take(excess)
        .filter(|r| r != new && Some(r.as_str()) != previous)
        .collect()
}

#[cfg(test)]
mod tests;
