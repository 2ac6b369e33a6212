//! The archive strategy's artifact: `ref` resolved in the local repository with git2
//! and that commit's tree packed once into a gzip'd tar, streamed to every host, so
//! hosts need neither git nor credentials for the repository.

use std::io::Write as _;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use git2::{ObjectType, Repository, TreeWalkMode, TreeWalkResult};

/// The commit a deploy ships.
pub struct Commit {
    pub sha: String,
    pub summary: String,
}

/// Resolves `git_ref` (default `HEAD`) in the repository that holds `dir`.
pub fn resolve(dir: &Path, git_ref: Option<&str>) -> Result<(Repository, Commit), String> {
    let repo = Repository::discover(dir).map_err(|e| {
        format!(
            "{} is not in a git repository ({})\nhint: the archive strategy packs a commit of the repository holding the config file",
            dir.display(),
            e.message()
        )
    })?;
    let spec = git_ref.unwrap_or("HEAD");
    let object = repo
        .revparse_single(spec)
        .or_else(|first| {
            // PM2's `origin/main` when only a local `main` exists, and the reverse.
            let alternative = match spec.strip_prefix("origin/") {
                Some(local) => local.to_string(),
                None => format!("origin/{spec}"),
            };
            repo.revparse_single(&alternative).map_err(|_| first)
        })
        .map_err(|e| {
            format!(
                "ref {spec:?} not found in the local repository: {}",
                e.message()
            )
        })?;
    let commit = object
        .peel_to_commit()
        .map_err(|e| format!("ref {spec:?} is not a commit: {}", e.message()))?;
    let summary = commit.summary().ok().flatten().unwrap_or("").to_string();
    let sha = commit.id().to_string();
    drop(commit);
    drop(object);
    Ok((repo, Commit { sha, summary }))
}

/// Packs the commit's tree (files, executables and symlinks; submodules are left out,
/// as `git archive` does) into a gzip'd tar. Entries get the commit's time.
pub fn pack(repo: &Repository, sha: &str) -> Result<Vec<u8>, String> {
    let oid = git2::Oid::from_str(sha).map_err(|e| e.message().to_string())?;
    let commit = repo.find_commit(oid).map_err(|e| e.message().to_string())?;
    let mtime = u64::try_from(commit.time().seconds()).unwrap_or(0);
    let tree = commit.tree().map_err(|e| e.message().to_string())?;
    let encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    let mut failure: Option<String> = None;
    tree.walk(TreeWalkMode::PreOrder, |parent, entry| {
        let Some(name) = entry.name().ok() else {
            failure = Some(format!("{parent}: a file name is not UTF-8"));
            return TreeWalkResult::Abort;
        };
        let path = format!("{parent}{name}");
        let result = match entry.kind() {
            Some(ObjectType::Tree) => {
                let mut header = header(tar::EntryType::Directory, 0o755, 0, mtime);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())
            }
            Some(ObjectType::Blob) => {
                let blob = match entry.to_object(repo).and_then(|o| o.peel_to_blob()) {
                    Ok(blob) => blob,
                    Err(e) => {
                        failure = Some(format!("{path}: {}", e.message()));
                        return TreeWalkResult::Abort;
                    }
                };
                let content = blob.content();
                if entry.filemode() == 0o120000 {
                    let target = String::from_utf8_lossy(content).into_owned();
                    let mut header = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                    builder.append_link(&mut header, &path, target)
                } else {
                    let mode = if entry.filemode() & 0o111 != 0 {
                        0o755
                    } else {
                        0o644
                    };
                    let mut header =
                        header(tar::EntryType::Regular, mode, content.len() as u64, mtime);
                    builder.append_data(&mut header, &path, content)
                }
            }
            // Submodules (commits) are not part of the tree's content.
            _ => Ok(()),
        };
        match result {
            Ok(()) => TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(format!("{path}: {e}"));
                TreeWalkResult::Abort
            }
        }
    })
    .map_err(|e| failure.clone().unwrap_or_else(|| e.message().to_string()))?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    let encoder = builder.into_inner().map_err(|e| e.to_string())?;
    let mut bytes = encoder.finish().map_err(|e| e.to_string())?;
    bytes.flush().map_err(|e| e.to_string())?;
    Ok(bytes)
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git");
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn packs_the_commit_tree_with_modes_and_links() {
        if Command::new("git").arg("--version").output().is_err() {
            eprintln!("skipping: no git");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        git(root, &["init", "-q", "-b", "main"]);
        std::fs::create_dir(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/run"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            root.join("bin/run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(root.join("README"), "v1\n").unwrap();
        std::os::unix::fs::symlink("README", root.join("LINK")).unwrap();
        git(root, &["add", "-A"]);
        git(root, &["commit", "-q", "-m", "first"]);
        // Uncommitted changes are not shipped.
        std::fs::write(root.join("README"), "dirty\n").unwrap();

        let (repo, commit) = resolve(&root.join("bin"), Some("main")).unwrap();
        assert_eq!(commit.summary, "first");
        assert_eq!(commit.sha.len(), 40);
        let bytes = pack(&repo, &commit.sha).unwrap();
        let out = tempfile::tempdir().unwrap();
        tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]))
            .unpack(out.path())
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("README")).unwrap(),
            "v1\n"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(out.path().join("bin/run"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(
            std::fs::read_link(out.path().join("LINK")).unwrap(),
            Path::new("README")
        );
        assert!(resolve(root, Some("nope")).is_err());
        // `origin/main` falls back to the local branch.
        assert_eq!(
            resolve(root, Some("origin/main")).unwrap().1.sha,
            commit.sha
        );
    }
}
