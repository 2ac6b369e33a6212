//! `Start`, `Restart` and `Apply`: new apps become instances (numbered after any
//! copies already running), apps from a config file take their new config (scaled to
//! the new count), and each instance's triggers (cron restart, rotation by time,
//! watch) are armed. Refuses, all problems at once, what the agent cannot run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_config::{AppSpec, ExecMode};
use tokio::time::Instant;

use crate::core::{self, Input, Status};
use crate::error::AgentError;
use crate::metrics::TreeUsage;
use crate::process::LogPaths;
use crate::schedule::{CronSchedule, spawn_cron};
use crate::supervisor::{Instance, Msg, Reply, Supervisor, Triggers, replace, share_env};
use crate::watch::{WatchSpec, spawn_watch};

/// How `apply_configs` treats apps that already exist.
#[derive(Clone, Copy, Debug)]
pub struct Configs {
    /// Replace the apps' inherited environment with the request's.
    pub update_env: bool,
    /// A stopped or errored instance is restarted (counted) rather than started.
    pub count_restart: bool,
    /// Restart the instances that keep running; false for a reload, which then
    /// replaces them one by one.
    pub restart_existing: bool,
}

impl Supervisor {
    pub(in crate::supervisor) fn start_request(
        &mut self,
        targets: Vec<String>,
        apps: Vec<AppSpec>,
        force: bool,
        from_config: bool,
        update_env: Option<BTreeMap<String, String>>,
    ) -> Result<Reply, AgentError> {
        let mut touched = Vec::new();
        let mut notes = Vec::new();
        if !targets.is_empty() {
            let ids = self.select(&targets)?;
            self.refresh_env(&ids, update_env.as_ref());
            for &id in &ids {
                let input = match self.instances[&id].core.status {
                    Status::Stopped | Status::Errored => Input::Start,
                    _ => Input::Restart,
                };
                self.work.push_back((id, input));
            }
            touched.extend(ids);
        }
        if !apps.is_empty() {
            self.check_supported(&apps)?;
            if from_config {
                let configs = Configs {
                    update_env: update_env.is_some(),
                    count_restart: false,
                    restart_existing: true,
                };
                touched.extend(self.apply_configs(apps, configs));
            } else {
                self.check_duplicates(&apps, force)?;
                for spec in apps {
                    touched.extend(self.create(spec, &mut notes));
                }
            }
        }
        Ok(Reply::Touched(touched, notes))
    }

    pub(in crate::supervisor) fn restart_request(
        &mut self,
        targets: Vec<String>,
        apps: Vec<AppSpec>,
        update_env: Option<BTreeMap<String, String>>,
    ) -> Result<Reply, AgentError> {
        let mut touched = Vec::new();
        if !targets.is_empty() {
            let ids = self.select(&targets)?;
            self.refresh_env(&ids, update_env.as_ref());
            for &id in &ids {
                self.work.push_back((id, Input::Restart));
            }
            touched.extend(ids);
        }
        if !apps.is_empty() {
            self.check_supported(&apps)?;
            let configs = Configs {
                update_env: update_env.is_some(),
                count_restart: true,
                restart_existing: true,
            };
            touched.extend(self.apply_configs(apps, configs));
        }
        Ok(Reply::Touched(touched, Vec::new()))
    }

    /// New configs for existing apps, taken without restarting them (a reload of a
    /// config file then replaces the instances one by one).
    pub(in crate::supervisor) fn apply(
        &mut self,
        apps: Vec<AppSpec>,
        update_env: bool,
    ) -> Result<Reply, AgentError> {
        self.check_supported(&apps)?;
        let configs = Configs {
            update_env,
            count_restart: true,
            restart_existing: false,
        };
        let ids = self.apply_configs(apps, configs);
        Ok(Reply::Touched(ids, Vec::new()))
    }

    pub(in crate::supervisor) fn refresh_env(
        &mut self,
        ids: &[u32],
        env: Option<&BTreeMap<String, String>>,
    ) {
        let Some(env) = env else { return };
        let mut env = Arc::new(env.clone());
        self.share_env(&mut env);
        for id in ids {
            if let Some(instance) = self.instances.get_mut(id) {
                Arc::make_mut(&mut instance.spec).inherited_env = env.clone();
            }
        }
    }

    /// Refuses, with every problem at once, what the agent cannot run: a cron pattern
    /// or time zone it cannot read, a watch path that does not exist, and the shared
    /// listening socket whose machinery has not landed yet.
    pub(in crate::supervisor) fn check_supported(
        &self,
        apps: &[AppSpec],
    ) -> Result<(), AgentError> {
        let mut problems = Vec::new();
        for spec in apps {
            let name = &spec.name;
            if spec.exec_mode == ExecMode::Cluster
                && spec.port.is_some()
                && spec.health_check.is_some()
            {
                problems.push(format!(
                    "app {name}: health_check cannot address one instance behind a shared socket\nhint: use exec_mode = \"proxy\", or wait_ready with sd_notify (READY=1)"
                ));
            }
            for pattern in spec
                .cron_restart
                .iter()
                .chain(spec.logs.rotation.interval.iter())
            {
                if let Err(error) = CronSchedule::parse(pattern, spec.cron_timezone.as_deref()) {
                    problems.push(format!("app {name}: {error}"));
                }
            }
            for path in &spec.watch {
                if !path.exists() {
                    problems.push(format!(
                        "app {name}: watch path {} does not exist",
                        path.display()
                    ));
                }
            }
            if spec.command.is_empty() {
                problems.push(format!("app {name}: no command to run"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AgentError::InvalidArgument(problems.join("\n")))
        }
    }

    pub(in crate::supervisor) fn check_duplicates(
        &self,
        apps: &[AppSpec],
        force: bool,
    ) -> Result<(), AgentError> {
        if force {
            return Ok(());
        }
        for spec in apps {
            if let Some(existing) = self
                .instances
                .values()
                .find(|p| p.spec.name == spec.name && p.spec.script == spec.script)
            {
                return Err(AgentError::AlreadyExists(format!(
                    "script already launched as {} (id {})\nhint: `fleet restart {}` restarts it; add -f to start another copy",
                    spec.name, existing.id, spec.name
                )));
            }
        }
        Ok(())
    }

    /// Applies configs from a file: an app that exists takes the new config (keeping
    /// its inherited environment unless `update_env`), is scaled to the new instance
    /// count and restarted; an app that does not exist is created.
    /// See `Configs` for how existing apps are treated.
    pub(in crate::supervisor) fn apply_configs(
        &mut self,
        apps: Vec<AppSpec>,
        configs: Configs,
    ) -> Vec<u32> {
        let Configs {
            update_env,
            count_restart,
            restart_existing,
        } = configs;
        let mut touched = Vec::new();
        let mut notes = Vec::new();
        for mut spec in apps {
            self.share_env(&mut spec.inherited_env);
            let existing: Vec<u32> = self
                .instances
                .values()
                .filter(|p| p.spec.name == spec.name)
                .map(|p| p.id)
                .collect();
            if existing.is_empty() {
                touched.extend(self.create(spec, &mut notes));
                continue;
            }
            if !update_env {
                spec.inherited_env = self.instances[&existing[0]].spec.inherited_env.clone();
            }
            let wanted = spec.instances.resolve(self.cpus);
            let spec = Arc::new(spec);
            let mut kept = Vec::new();
            let mut rearm = Vec::new();
            for &id in &existing {
                let instance = self.instances.get_mut(&id).expect("selected above");
                if instance.instance < wanted {
                    instance.spec = spec.clone();
                    instance.core.policy = core::Policy::from_spec(&spec);
                    instance.logs = LogPaths::for_instance(
                        &spec,
                        instance.instance,
                        wanted,
                        &self.home.logs_dir(),
                    );
                    instance.log_io = None;
                    rearm.push(id);
                    kept.push(instance.instance);
                    let input = match (instance.core.status, count_restart) {
                        (Status::Stopped | Status::Errored, false) => Input::Start,
                        _ => Input::Restart,
                    };
                    if restart_existing {
                        self.work.push_back((id, input));
                    }
                } else {
                    self.work.push_back((id, Input::Delete));
                }
                touched.push(id);
            }
            for id in rearm {
                self.arm_triggers(id);
            }
            for instance in (0..wanted).filter(|i| !kept.contains(i)) {
                let id = self.next_id;
                self.next_id += 1;
                self.insert(id, instance, spec.clone(), 0);
                self.work.push_back((id, Input::Start));
                touched.push(id);
            }
        }
        touched
    }

    /// Makes `env` the copy an existing instance already holds when they are equal: a
    /// `fleet start` of 100 apps sends the CLI's environment 100 times, a few KB each.
    pub(in crate::supervisor) fn share_env(&self, env: &mut Arc<BTreeMap<String, String>>) {
        share_env(self.instances.values().map(|p| &p.spec.inherited_env), env);
    }

    /// Registers a new app's instances and starts them (unless `autostart` is off).
    pub(in crate::supervisor) fn create(
        &mut self,
        spec: AppSpec,
        notes: &mut Vec<String>,
    ) -> Vec<u32> {
        let count = spec.instances.resolve(self.cpus);
        let autostart = spec.autostart;
        let spec = Arc::new(spec);
        // Instance numbers continue after copies already running under the same name
        // (`start -f`), lowest free number first as PM2 does on scale.
        let mut used: Vec<u32> = self
            .instances
            .values()
            .filter(|p| p.spec.name == spec.name)
            .map(|p| p.instance)
            .collect();
        let mut ids = Vec::new();
        for _ in 0..count {
            let instance = (0..).find(|n| !used.contains(n)).expect("unbounded range");
            used.push(instance);
            let id = self.next_id;
            self.next_id += 1;
            self.insert(id, instance, spec.clone(), 0);
            if autostart {
                self.work.push_back((id, Input::Start));
            }
            ids.push(id);
        }
        if !autostart {
            notes.push(format!(
                "{} registered as stopped (autostart = false)",
                spec.name
            ));
        }
        ids
    }

    pub(in crate::supervisor) fn insert(
        &mut self,
        id: u32,
        instance: u32,
        spec: Arc<AppSpec>,
        restarts: u32,
    ) {
        let instances = spec.instances.resolve(self.cpus);
        let mut core = core::Instance::new(core::Policy::from_spec(&spec), Instant::now());
        core.restarts = restarts;
        let logs = LogPaths::for_instance(&spec, instance, instances, &self.home.logs_dir());
        self.instances.insert(
            id,
            Instance {
                id,
                spec,
                instance,
                core,
                pid: None,
                start_ticks: None,
                generation: 0,
                created_at: SystemTime::now(),
                logs,
                log_io: None,
                usage: TreeUsage::default(),
                triggers: Triggers::default(),
                private_port: None,
                probes: replace::Probes::default(),
                healthy: true,
                draining: false,
                standby: None,
                retiring: Vec::new(),
                replace_error: None,
                restart_cause: None,
                timer_due: None,
            },
        );
        self.next_id = self.next_id.max(id + 1);
        self.arm_triggers(id);
    }

    /// Starts the instance's cron restart, log rotation by time and watcher (again
    /// after a config change). Patterns and paths were checked in `validate`.
    pub(in crate::supervisor) fn arm_triggers(&mut self, id: u32) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        let spec = instance.spec.clone();
        let mut triggers = Triggers::default();
        if let Some(pattern) = &spec.cron_restart {
            match CronSchedule::parse(pattern, spec.cron_timezone.as_deref()) {
                Ok(schedule) => {
                    let tx = self.tx.clone();
                    triggers.cron_restart = Some(spawn_cron(schedule, move || {
                        let _ = tx.send(Msg::Cron { id });
                    }));
                }
                Err(error) => tracing::error!(app = %spec.name, %error, "cron_restart ignored"),
            }
        }
        // Rotation by time: one timer per distinct pattern and zone for the whole
        // agent (a timer per app cost memory for 100 identical daily schedules).
        if let Some(pattern) = spec.logs.rotation.interval.clone() {
            let key = (pattern, spec.cron_timezone.clone());
            if !self.rotation_timers.contains_key(&key)
                && let Ok(schedule) = CronSchedule::parse(&key.0, key.1.as_deref())
            {
                let tx = self.tx.clone();
                let fired = key.clone();
                let handle = spawn_cron(schedule, move || {
                    let _ = tx.send(Msg::RotateLogs {
                        pattern: fired.0.clone(),
                        timezone: fired.1.clone(),
                    });
                });
                self.rotation_timers.insert(key, handle);
            }
        }
        // One watcher per app is enough: instance 0 watches for all of them.
        if !spec.watch.is_empty() && instance.instance == 0 {
            let tx = self.tx.clone();
            let watch = WatchSpec {
                paths: spec.watch.clone(),
                ignore: spec.ignore_watch.clone(),
                delay: Duration::from_millis(spec.watch_delay_ms),
            };
            match spawn_watch(watch, move |paths| {
                let _ = tx.send(Msg::Watched { id, paths });
            }) {
                Ok(handle) => triggers.watch = Some(handle),
                Err(error) => tracing::error!(app = %spec.name, %error, "watch failed"),
            }
        }
        instance.triggers = triggers;
    }
}
