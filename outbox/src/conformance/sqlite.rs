use std::path::{Path, PathBuf};

/// A database file of its own for one test, in the temp directory; the file and its
/// `-wal`/`-shm` companions are deleted when this is dropped — also when the test
/// panics.
#[derive(Debug)]
pub struct TempDbFile {
    path: PathBuf,
}

impl TempDbFile {
    /// A new, not yet created, file named `{prefix}-{uuid}.db`.
    pub fn new(prefix: &str) -> Self {
        Self {
            path: std::env::temp_dir()
                .join(format!("{prefix}-{}.db", uuid::Uuid::new_v4().simple())),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `sqlite://{path}`.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for TempDbFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}
