//! The `/.singularity.d` directory Apptainer expects of an image, as its own
//! conversion of a `docker://` image writes it (apptainer
//! `internal/pkg/build/sources/oci_unpack.go` / `conveyorPacker_oci.go`), for
//! mounts that Apptainer runs: `env/10-docker2singularity.sh` exporting the
//! image's `Env`, `runscript` running `Entrypoint` + `Cmd` (arguments replace
//! `Cmd`, as `docker run` does), `labels.json` with the image's labels, and
//! an empty `actions/` (Apptainer binds its own action scripts there).

use std::collections::BTreeMap;

use crate::image::Config;
use crate::rootfs::synthetic::SyntheticFiles;

/// The files of `/.singularity.d` for an image whose config is `config`.
pub fn singularity_files(config: &Config) -> SyntheticFiles {
    let mut env = String::from(
        "#!/bin/sh\n# The image's Env, written by lazyimg as Apptainer's OCI conversion does.\n",
    );
    for pair in config.env().iter().flatten() {
        if let Some((name, value)) = pair.split_once('=')
            && is_shell_name(name)
        {
            env.push_str(&format!("export {name}={}\n", quote(value)));
        }
    }
    let entrypoint: Vec<String> = config
        .entrypoint()
        .iter()
        .flatten()
        .map(|a| quote(a))
        .collect();
    let cmd: Vec<String> = config.cmd().iter().flatten().map(|a| quote(a)).collect();
    let (with_args, without_args) = match (entrypoint.is_empty(), cmd.is_empty()) {
        (true, true) => ("\"$@\"".to_string(), "/bin/sh".to_string()),
        (true, false) => ("\"$@\"".to_string(), cmd.join(" ")),
        (false, _) => (
            format!("{} \"$@\"", entrypoint.join(" ")),
            [entrypoint.join(" "), cmd.join(" ")]
                .join(" ")
                .trim_end()
                .to_string(),
        ),
    };
    let runscript = format!(
        "#!/bin/sh\n# Entrypoint and Cmd of the image, written by lazyimg as Apptainer's OCI conversion does.\n\
         if [ $# -gt 0 ]; then\n    exec {with_args}\nfi\nexec {without_args}\n"
    );
    // Sorted: the file's bytes must not change from one mount to the next.
    let labels: BTreeMap<&String, &String> = config.labels().iter().flatten().collect();
    let labels = serde_json::to_string_pretty(&labels).expect("labels serialise");
    let mut files = SyntheticFiles::default();
    files
        .dir(".singularity.d", 0o755)
        .dir(".singularity.d/actions", 0o755)
        .dir(".singularity.d/env", 0o755)
        .file(
            ".singularity.d/env/10-docker2singularity.sh",
            0o755,
            env.as_bytes(),
        )
        .file(".singularity.d/runscript", 0o755, runscript.as_bytes())
        .file(
            ".singularity.d/labels.json",
            0o644,
            format!("{labels}\n").as_bytes(),
        );
    files
}

/// A POSIX shell variable name (XBD "Name"): what `export` accepts.
fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `text` as one shell word: single quotes, embedded ones as `'\''`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(env: &[&str], entrypoint: &[&str], cmd: &[&str]) -> Config {
        let list = |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
        let mut config = Config::default();
        config.set_env(list(env));
        config.set_entrypoint(list(entrypoint));
        config.set_cmd(list(cmd));
        config
    }

    /// Runs `script` with `sh -c`, arguments `args`; its stdout.
    fn sh(script: &str, args: &[&str]) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    fn file(files: &SyntheticFiles, name: &str) -> String {
        let (tree, bytes) = files.parts();
        let entry = tree.iter().find(|e| e.path == name).unwrap();
        let crate::layer::EntryKind::Regular { offset, size } = entry.kind else {
            panic!("{name} is not a file");
        };
        String::from_utf8(bytes[offset as usize..(offset + size) as usize].to_vec()).unwrap()
    }

    #[test]
    fn the_env_script_exports_the_image_env_verbatim() {
        let files = singularity_files(&config(
            &["A=x y", "Q=it's $HOME", "1BAD=no", "E="],
            &[],
            &[],
        ));
        let env = file(&files, ".singularity.d/env/10-docker2singularity.sh");
        let shown = sh(
            &format!("{env}\nprintf '%s|%s|%s' \"$A\" \"$Q\" \"${{E-unset}}\""),
            &[],
        );
        assert_eq!(shown, "x y|it's $HOME|");
        assert!(!env.contains("1BAD"));
    }

    #[test]
    fn the_runscript_runs_entrypoint_and_cmd_and_arguments_replace_cmd() {
        let runscript = |c: &Config, args: &[&str]| {
            let files = singularity_files(c);
            let script = file(&files, ".singularity.d/runscript").replace("exec ", "exec echo ");
            sh(&script, args)
        };
        let both = config(&[], &["printf", "%s,"], &["c 1", "c2"]);
        assert_eq!(runscript(&both, &[]), "printf %s, c 1 c2\n");
        assert_eq!(runscript(&both, &["x"]), "printf %s, x\n");
        let cmd_only = config(&[], &[], &["echo", "hi"]);
        assert_eq!(runscript(&cmd_only, &[]), "echo hi\n");
        assert_eq!(runscript(&cmd_only, &["ls", "/"]), "ls /\n");
        assert_eq!(runscript(&config(&[], &[], &[]), &[]), "/bin/sh\n");
    }
}
