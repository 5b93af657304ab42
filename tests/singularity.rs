//! `lazyimg mount --apptainer` (issue 13, acceptance 3): the mount carries
//! `/.singularity.d` as Apptainer's own conversion of the image writes it, so
//! `apptainer exec|run MNT` sees the image's environment and runscript.
//! Apptainer is not packaged for Debian 12, so the scripts are run with
//! Charliecloud's `ch-run` on the same mount; a plain mount of the image
//! shows no `/.singularity.d` and the same files otherwise.
//!
//! Needs root (FUSE) and ch-run (scripts/setup-runtimes.sh).

mod support;

use std::path::Path;
use std::process::Command;

use support::image::ImageSpec;
use support::listing::listing;
use support::pushed::{busybox_layer, sh};
use support::testenv::{Lazyimg, Mounted, build_layout_from_layers, nonce, testenv};

/// `ch-run MNT -- ARGS…`: stdout, which must be all it wrote.
fn ch_run(mnt: &Path, args: &[&str]) -> String {
    let out = Command::new("ch-run")
        .env("USER", "root")
        .arg(mnt)
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ch-run {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn an_apptainer_mount_carries_singularity_d_and_a_plain_mount_does_not() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let mut spec = ImageSpec::new(Vec::new())
        .env(&["PATH=/bin", "GREETING=hello apptainer", "QUOTED=it's $HOME"])
        .entrypoint(&["/bin/echo", "ep"])
        .cmd(&["c1", "c 2"]);
    spec.labels.insert("org.example.lab".into(), "lazy".into());
    let layers = [busybox_layer(work.path())];
    let (layout, _) = build_layout_from_layers(&work.path().join("img"), &spec, &layers, "v1");
    let reference = format!("{}/apptainer/img-{}:v1", env.plain(), nonce());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
        layout.dir.display()
    ));

    let lazyimg = Lazyimg::new(env);
    let apptainer = Mounted::at(
        &lazyimg,
        &reference,
        "app",
        &["--apptainer", "--allow-other"],
    );
    let env_out = ch_run(
        &apptainer.path,
        &[
            "sh",
            "-c",
            ". /.singularity.d/env/10-docker2singularity.sh; env",
        ],
    );
    assert!(
        env_out.lines().any(|l| l == "GREETING=hello apptainer"),
        "{env_out}"
    );
    assert!(
        env_out.lines().any(|l| l == "QUOTED=it's $HOME"),
        "{env_out}"
    );
    assert_eq!(
        ch_run(&apptainer.path, &["/.singularity.d/runscript"]),
        "ep c1 c 2\n"
    );
    assert_eq!(
        ch_run(&apptainer.path, &["/.singularity.d/runscript", "x"]),
        "ep x\n"
    );
    let labels =
        std::fs::read_to_string(apptainer.path.join(".singularity.d/labels.json")).unwrap();
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["org.example.lab"], "lazy");
    assert!(apptainer.path.join(".singularity.d/actions").is_dir());

    // A plain mount: no /.singularity.d, and every other file the same.
    let plain = Mounted::at(&lazyimg, &reference, "plain", &[]);
    assert!(!plain.path.join(".singularity.d").exists());
    let with: Vec<String> = listing(&apptainer.path)
        .unwrap()
        .into_iter()
        .filter(|line| !line.contains(".singularity.d"))
        .collect();
    let without = listing(&plain.path).unwrap();
    assert!(without.len() > 10, "{without:?}");
    assert_eq!(with, without);
}
