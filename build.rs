//! Names the commit in `dnsfront --version` (`DNSFRONT_COMMIT`): the short
//! hash of HEAD, or `unknown` outside a git checkout (a source tarball, a
//! crate download). `DNSFRONT_COMMIT` in the environment wins (a packager
//! building from an export). No `-dirty` mark: the script reruns only when
//! HEAD moves, so it could not tell an edit made after the last commit.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=DNSFRONT_COMMIT");
    let commit = std::env::var("DNSFRONT_COMMIT").ok().or_else(|| {
        let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
        // Rebuilt when HEAD moves: its file, the branch it names, packed refs.
        for (dir, file) in [
            (git(&["rev-parse", "--git-dir"]), Some("HEAD".to_owned())),
            (
                git(&["rev-parse", "--git-common-dir"]),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ),
            (
                git(&["rev-parse", "--git-common-dir"]),
                Some("packed-refs".to_owned()),
            ),
        ] {
            if let (Some(dir), Some(file)) = (dir, file) {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(file);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
        Some(hash)
    });
    println!(
        "cargo:rustc-env=DNSFRONT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}
