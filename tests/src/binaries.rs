//! The binaries under test, built once per test process.
//!
//! Tests run the real `fenced` and `fencectl` as child processes, so they
//! need the binaries on disk and up to date with the source. Cargo does not
//! build another package's binaries for a test, so the harness asks Cargo
//! (through escargot) the first time a test needs one; Cargo's own
//! freshness check makes that cheap when nothing changed. The build uses
//! the profile and target the tests were built with. `FENCED_BIN` names a
//! prebuilt server binary to use instead.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Path to the `fenced` server binary, building it on first use.
///
/// # Panics
///
/// When the build fails; the panic message carries Cargo's output.
pub fn fenced_bin() -> &'static Path {
    static FENCED: OnceLock<PathBuf> = OnceLock::new();
    FENCED.get_or_init(|| {
        prebuilt(FENCED_BIN_VAR).unwrap_or_else(|| build("fenced-server", "fenced"))
    })
}

/// Set this environment variable to the path of a `fenced` binary to use it
/// instead of building one: for long chaos runs that must not pick up (or
/// wait for) a rebuild of the working tree halfway.
const FENCED_BIN_VAR: &str = "FENCED_BIN";

/// The binary an environment variable names, if it is set.
fn prebuilt(var: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(var)?);
    match path.is_file() {
        true => Some(path),
        false => panic!("{var}={} is not a file", path.display()),
    }
}

/// Path to the `fencectl` binary, building it on first use.
///
/// # Panics
///
/// When the build fails; the panic message carries Cargo's output.
pub fn fencectl_bin() -> &'static Path {
    static FENCECTL: OnceLock<PathBuf> = OnceLock::new();
    FENCECTL.get_or_init(|| build("fenced-client", "fencectl"))
}

fn build(package: &str, bin: &str) -> PathBuf {
    match escargot::CargoBuild::new()
        .package(package)
        .bin(bin)
        // Same profile as the tests, and no `--target`: the binary lands in
        // the same `target/<profile>` the workspace build already filled, so
        // nothing is compiled twice.
        .current_release()
        .run()
    {
        Ok(run) => run.path().to_owned(),
        Err(err) => panic!("building {bin} (package {package}) failed: {err}"),
    }
}
