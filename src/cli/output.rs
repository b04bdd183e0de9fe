//! The output folder of a run: everything is written into `<output>.partial` beside it and moved
//! into place only when the run succeeded, so an earlier good model in `<output>` survives any
//! failed, killed or interrupted run. A run that stops with checkpoints keeps its partial folder
//! so it can be resumed; one without is cleaned up.

use std::path::{Path, PathBuf};

use dpo_wgpu::error::{Error, Result};
use dpo_wgpu::io::native::files::replace_dir;

use crate::args::flag;

pub struct Staging {
    output: PathBuf,
    dir: PathBuf,
    /// Set once the run finished: its folder is never deleted after that.
    committed: bool,
}

/// `<output>.partial`.
fn staging_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_os_string());
    name.push(".partial");
    output.with_file_name(name)
}

/// The newest `checkpoint-N` folder in `dir`.
pub fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, path)| path)
}

impl Staging {
    /// Start writing a run for `output`. A partial folder left by an earlier run is reused only
    /// when this run resumes from one of its checkpoints; otherwise it is refused, not deleted.
    pub fn begin(output: &Path, resume_from: Option<&Path>) -> Result<Self> {
        if output.exists() && !output.is_dir() {
            return Err(Error::setting(
                "output",
                format!("{} is a file, not a folder", output.display()),
            ));
        }
        let dir = staging_path(output);
        if dir.exists() {
            let inside = |p: &Path| {
                let (Ok(p), Ok(d)) = (p.canonicalize(), dir.canonicalize()) else {
                    return false;
                };
                p.starts_with(d)
            };
            if !resume_from.is_some_and(inside) {
                let how = match latest_checkpoint(&dir) {
                    Some(c) => format!("resume it with {} {}", flag("resume_from"), c.display()),
                    None => "it has no checkpoint".into(),
                };
                return Err(Error::setting(
                    "output",
                    format!(
                        "{} holds a run that did not finish ({how}); delete that folder to start \
                         over",
                        dir.display()
                    ),
                ));
            }
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        Ok(Self {
            output: output.to_path_buf(),
            dir,
            committed: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Move the finished run into place (replacing an earlier `output`). If that fails, the
    /// finished run stays in the partial folder.
    pub fn commit(mut self) -> Result<()> {
        self.committed = true;
        // Half-written files and checkpoints of a killed run that this one resumed.
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".partial-") {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(path)
                } else {
                    std::fs::remove_file(path)
                };
            }
        }
        replace_dir(&self.dir, &self.output).map_err(|e| {
            Error::Invalid(format!(
                "{e}; the finished run is in {}",
                self.dir.display()
            ))
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed && latest_checkpoint(&self.dir).is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
