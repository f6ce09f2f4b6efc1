//! Trace fixtures: a shrunk failing sequence of transitions, saved as JSON under
//! `conformance/fixtures/<name>.json` and replayed by the suite on every run (so a failure
//! once found stays a test). Hand-written fixtures pin down scenarios worth keeping.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::HarnessError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fixture {
    pub name: String,
    /// The suite whose transitions these are (`as_qs`, `ds`).
    pub suite: String,
    /// The seed of the run that found it (empty for hand-written ones).
    pub seed: String,
    /// What went wrong (or, for hand-written ones, what the trace is about).
    pub failure: String,
    /// The transitions, in the suite's serde form.
    pub transitions: Vec<serde_json::Value>,
}

impl Fixture {
    /// Write `<dir>/<name>.json`.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, HarnessError> {
        std::fs::create_dir_all(dir).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let path = dir.join(format!("{}.json", self.name));
        let json =
            serde_json::to_string_pretty(self).map_err(|e| HarnessError::Setup(e.to_string()))?;
        std::fs::write(&path, json + "\n").map_err(|e| HarnessError::Setup(e.to_string()))?;
        Ok(path)
    }

    /// Every fixture in `dir`, sorted by file name.
    pub fn load_all(dir: &Path) -> Result<Vec<Fixture>, HarnessError> {
        let mut paths = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HarnessError::Setup(e.to_string())),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| HarnessError::Setup(e.to_string()))?
                .path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut out = Vec::new();
        for path in paths {
            let text =
                std::fs::read_to_string(&path).map_err(|e| HarnessError::Setup(e.to_string()))?;
            let fixture: Fixture = serde_json::from_str(&text)
                .map_err(|e| HarnessError::Setup(format!("{}: {e}", path.display())))?;
            out.push(fixture);
        }
        Ok(out)
    }
}
