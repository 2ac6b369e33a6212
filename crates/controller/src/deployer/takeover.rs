//! A deploy whose controller died is another's to finish. On a shared store each run
//! names its controller and its archive is kept in the store as well as in the data
//! directory (`keep_archive`). Every lease renewal, a controller looks for unfinished
//! runs whose controller is no longer live, claims each in one conditional update (one
//! claim wins), writes the archive back into its own data directory and resumes the run
//! as a restarted controller would: a new fencing number (any host lock of the dead
//! controller's attempt is taken over at once), the same release, hosts already on it
//! going on from the switch.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;

use super::{archive_path, lock, runs, start_unfinished};
use crate::server::Controller;
use crate::store::Member;

/// The archive goes into the store in chunks of this size (as it came from the CLI).
const CHUNK: usize = 1024 * 1024;

/// Copies run `id`'s archive at `path` into the store.
pub(crate) async fn keep_archive(
    controller: &Controller,
    id: u64,
    path: &Path,
) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut seq = 0u64;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match file.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) => return Err(error.to_string()),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        chunk.truncate(filled);
        controller
            .store
            .call(move |db| runs::put_archive_chunk(db, id, seq, &chunk))
            .await
            .map_err(|e| e.to_string())?;
        seq += 1;
        if filled < CHUNK {
            return Ok(());
        }
    }
}

/// Writes run `id`'s kept archive to `path`; false when the store has none (a run of
/// `revert`, which ships nothing).
async fn restore_archive(controller: &Controller, id: u64, path: &Path) -> Result<bool, String> {
    let mut file: Option<std::fs::File> = None;
    let mut seq = 0u64;
    loop {
        let chunk = controller
            .store
            .call(move |db| runs::archive_chunk(db, id, seq))
            .await
            .map_err(|e| e.to_string())?;
        let Some(chunk) = chunk else {
            return Ok(file.is_some());
        };
        if file.is_none() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            file = Some(std::fs::File::create(path).map_err(|e| e.to_string())?);
        }
        file.as_mut()
            .expect("created above")
            .write_all(&chunk)
            .map_err(|e| e.to_string())?;
        seq += 1;
    }
}

/// Takes over the unfinished runs of controllers not among `live`.
pub(crate) async fn take_over(controller: &Arc<Controller>, live: &[Member]) {
    let live: HashSet<&str> = live.iter().map(|m| m.id.as_str()).collect();
    let unfinished = match controller.store.call(runs::unfinished).await {
        Ok(unfinished) => unfinished,
        Err(error) => {
            tracing::debug!(%error, "cannot look for deploys to take over");
            return;
        }
    };
    let me = controller.peers.me.id.clone();
    for (id, owner) in unfinished {
        if live.contains(owner.as_str()) || lock(&controller.deployer.active).contains_key(&id) {
            continue;
        }
        let (from, to) = (owner.clone(), me.clone());
        match controller
            .store
            .call(move |db| runs::claim(db, id, &from, &to))
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(id, %error, "cannot claim a dead controller's deploy");
                continue;
            }
        }
        let path = archive_path(&controller.deployer.files, id);
        if let Err(error) = restore_archive(controller, id, &path).await {
            tracing::error!(id, %error, "cannot bring back a taken-over deploy's archive");
        }
        let to = me.clone();
        match controller
            .store
            .call(move |db| runs::resume_one(db, id, &to))
            .await
        {
            Ok(Some(run)) => {
                tracing::info!(id, from = %owner, "took over the deploy of a controller whose lease ended");
                start_unfinished(controller, run).await;
            }
            Ok(None) => {}
            Err(error) => tracing::error!(id, %error, "cannot resume a taken-over deploy"),
        }
    }
}

/// Cancels asked for through another controller of the store, of runs this one runs.
pub(crate) async fn notice_cancels(controller: &Arc<Controller>) {
    let me = controller.peers.me.id.clone();
    let Ok(ids) = controller
        .store
        .call(move |db| runs::cancelling(db, &me))
        .await
    else {
        return;
    };
    for id in ids {
        if let Some(run) = lock(&controller.deployer.active).get(&id)
            && !run.interrupt.is_set()
        {
            tracing::info!(id, "a cancel asked for through another controller");
            run.interrupt.interrupt();
        }
    }
}
