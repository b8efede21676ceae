//! `pip install ./python` (maturin) builds the medpatch-python package alone, so cargo resolves
//! its dependencies' features from that package alone. scripts/test.sh relies on that resolution
//! agreeing with the whole workspace's: then the package build reuses every dependency `cargo
//! build --workspace` compiled instead of compiling them all a second time (about 13 minutes on
//! 2 cores). python/Cargo.toml lists the few dependencies it needs for that; this test fails,
//! naming the differences, when a dependency change breaks the agreement.

use std::collections::BTreeSet;
use std::process::Command;

/// Every `package [features]` line of `cargo tree` for these package selection arguments.
fn resolution(selection: &[&str]) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-e", "normal,build", "--prefix", "none", "-f", "{p} [{f}]"])
        .args(selection)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo tree {selection:?}: {}", String::from_utf8_lossy(&output.stderr));
    // `(*)` marks a package printed before; `(proc-macro)` is the same whichever way it is reached.
    String::from_utf8(output.stdout).unwrap().lines().map(|l| l.trim_end_matches(" (*)").to_string()).collect()
}

#[test]
fn the_python_package_resolves_its_dependencies_as_the_workspace_does() {
    let package = resolution(&["-p", "medpatch-python"]);
    let workspace = resolution(&["--workspace"]);
    assert!(package.iter().any(|l| l.starts_with("pyo3 ")), "cargo tree lists pyo3 for medpatch-python");
    let differing: Vec<&String> = package.difference(&workspace).collect();
    assert!(
        differing.is_empty(),
        "built alone, medpatch-python gives these dependencies other features than the workspace \
         build does, so `pip install ./python` would compile them (and everything above them) \
         again; add the missing features to python/Cargo.toml's unification entries:\n{}",
        differing.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    );
}
