use std::path::Path;

use super::*;

const LIST: &str = "/etc/lazyimg/approved.toml";
const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn policy(text: &str) -> Policy {
    Policy::parse(text, Path::new(LIST)).unwrap()
}

fn bad(text: &str) -> String {
    Policy::parse(text, Path::new(LIST))
        .unwrap_err()
        .to_string()
}

fn config(text: &str) -> Config {
    Config::parse(text, Path::new("/etc/lazyimg/config.toml")).unwrap()
}

fn name(text: &str) -> CheckedName {
    name_with(&Config::default(), text)
}

fn name_with(config: &Config, text: &str) -> CheckedName {
    canonical_name(config, &ImageRef::parse(text, config).unwrap())
}

fn d(text: &str) -> Digest {
    text.parse().unwrap()
}

#[test]
fn the_issue_example_parses_with_rule_numbers_and_lines() {
    let p = policy(&format!(
        r#"
# approved by the IG
[[image]]
repository = "ghcr.io/example-lab/cuda-sample"   # or a glob
tags = ["nbody-cuda11.7.1"]
digest = "{D1}"
note = "IG approval 2026-114"

[[image]]
repository = "ghcr.io/example-lab/*"
"#
    ));
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].number, 1);
    assert_eq!(p.rules[0].line, Some(3));
    assert_eq!(p.rules[1].line, Some(9));
    assert_eq!(p.rules[0].digest, Some(d(D1)));
    assert_eq!(p.rules[0].note.as_deref(), Some("IG approval 2026-114"));
    assert!(p.rules[0].describe().contains("IG approval 2026-114"));
}

#[test]
fn exact_repository_and_any_tag() {
    let p = policy("[[image]]\nrepository = \"ghcr.io/lab/x\"\n");
    let approval = p.check_name(&name("ghcr.io/lab/x:v1")).unwrap();
    assert_eq!(approval.rule().number, 1);
    assert!(approval.required_digests().is_empty());
    approval.check_digest(&d(D1)).unwrap();
    p.check_name(&name("ghcr.io/lab/x")).unwrap();
    assert!(p.check_name(&name("ghcr.io/lab/xy:v1")).is_err());
    assert!(p.check_name(&name("ghcr.io/lab/x/y:v1")).is_err());
    assert!(p.check_name(&name("docker.io/lab/x:v1")).is_err());
}

#[test]
fn refusal_names_the_list_and_what_approvers_would_add() {
    let p = policy("[[image]]\nrepository = \"ghcr.io/lab/other\"\n");
    let err = p.check_name(&name("ghcr.io/lab/x:v2")).unwrap_err();
    assert!(matches!(err, Error::NotApproved { .. }));
    assert!(err.hint().is_some());
    assert_eq!(
        err.to_string(),
        "ghcr.io/lab/x:v2 is not on the approved list /etc/lazyimg/approved.toml \
         (no rule for ghcr.io/lab/x; approvers would add [[image]] \
         repository = \"ghcr.io/lab/x\" tags = [\"v2\"])"
    );
    let err = p
        .check_name(&name(&format!("ghcr.io/lab/x@{D1}")))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("digest = \"{D1}\"")), "{err}");
}

#[test]
fn globs_cover_one_segment_and_double_stars_more() {
    let p = policy("[[image]]\nrepository = \"ghcr.io/example-lab/*\"\n");
    p.check_name(&name("ghcr.io/example-lab/cuda-sample:1"))
        .unwrap();
    assert!(p.check_name(&name("ghcr.io/example-lab/a/b:1")).is_err());
    assert!(p.check_name(&name("ghcr.io/example-lab2/a:1")).is_err());
    let p = policy("[[image]]\nrepository = \"ghcr.io/example-lab/**\"\n");
    p.check_name(&name("ghcr.io/example-lab/a/b:1")).unwrap();
}

#[test]
fn tags_restrict_and_may_be_globs() {
    let p = policy(
        "[[image]]\nrepository = \"ghcr.io/lab/x\"\ntags = [\"v1\", \"nbody-*\"]\nnote = \"n\"\n",
    );
    p.check_name(&name("ghcr.io/lab/x:v1")).unwrap();
    p.check_name(&name("ghcr.io/lab/x:nbody-cuda11.7.1"))
        .unwrap();
    let err = p
        .check_name(&name("ghcr.io/lab/x:v2"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rule 1 (line 1) approves only the tags \"v1\", \"nbody-*\", not \"v2\""),
        "{err}"
    );
    // No tag means `latest`, which is not listed.
    assert!(p.check_name(&name("ghcr.io/lab/x")).is_err());
    // A digest-pinned reference is not checked against tags.
    let err = p
        .check_name(&name(&format!("ghcr.io/lab/x@{D1}")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("digest-pinned"), "{err}");
}

#[test]
fn pinned_references_need_that_digest_or_an_unconstrained_rule() {
    let p = policy(&format!(
        "[[image]]\nrepository = \"ghcr.io/lab/x\"\ndigest = \"{D1}\"\n"
    ));
    let approval = p.check_name(&name(&format!("ghcr.io/lab/x@{D1}"))).unwrap();
    approval.check_digest(&d(D1)).unwrap();
    let err = p
        .check_name(&name(&format!("ghcr.io/lab/x@{D2}")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("approves only {D1}, not {D2}")),
        "{err}"
    );

    let open = policy("[[image]]\nrepository = \"ghcr.io/lab/*\"\n");
    open.check_name(&name(&format!("ghcr.io/lab/x@{D2}")))
        .unwrap();
}

#[test]
fn a_digest_rule_allows_a_tag_only_once_it_resolves_there() {
    let p = policy(&format!(
        "[[image]]\nrepository = \"ghcr.io/lab/x\"\ntags = [\"v1\"]\ndigest = \"{D1}\"\n"
    ));
    let approval = p.check_name(&name("ghcr.io/lab/x:v1")).unwrap();
    assert_eq!(approval.required_digests(), vec![d(D1)]);
    assert!(
        approval
            .explain()
            .contains(&format!("provided it resolves to {D1}"))
    );
    approval.check_digest(&d(D1)).unwrap();
    // Either the top-level (index) digest or the platform manifest's will do.
    approval.check_resolved(&d(D3), &d(D1)).unwrap();
    approval.check_resolved(&d(D1), &d(D3)).unwrap();
    let err = approval.check_resolved(&d(D2), &d(D3)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NotApproved { .. }));
    assert!(text.contains(LIST), "{text}");
    assert!(
        text.contains(&format!(
            "it resolves to {D2} (platform manifest {D3}), but rule 1 (line 1) approves only {D1}"
        )),
        "{text}"
    );
    // Tags still restrict.
    assert!(p.check_name(&name("ghcr.io/lab/x:v2")).is_err());
}

#[test]
fn an_unconstrained_rule_makes_the_digest_step_moot() {
    let p = policy(&format!(
        "[[image]]\nrepository = \"ghcr.io/lab/x\"\ndigest = \"{D1}\"\n\
         [[image]]\nrepository = \"ghcr.io/lab/*\"\n"
    ));
    let approval = p.check_name(&name("ghcr.io/lab/x:v1")).unwrap();
    assert!(approval.required_digests().is_empty());
    approval.check_digest(&d(D2)).unwrap();
    assert_eq!(approval.rule_for(&d(D2), &d(D2)).unwrap().number, 2);
}

#[test]
fn several_digest_rules_each_allow_their_digest() {
    let p = policy(&format!(
        "[[image]]\nrepository = \"ghcr.io/lab/x\"\ndigest = \"{D1}\"\n\
         [[image]]\nrepository = \"ghcr.io/lab/x\"\ndigest = \"{D2}\"\n"
    ));
    let approval = p.check_name(&name("ghcr.io/lab/x:v1")).unwrap();
    approval.check_digest(&d(D1)).unwrap();
    assert_eq!(approval.rule_for(&d(D2), &d(D2)).unwrap().number, 2);
    let err = approval.check_digest(&d(D3)).unwrap_err().to_string();
    assert!(
        err.contains("rule 1 (line 1) approves only") && err.contains("rule 2"),
        "{err}"
    );
}

#[test]
fn proxy_references_are_checked_under_the_prefix_they_mirror() {
    let c = config(
        "[[registry]]\nprefix = \"ghcr.io\"\nlocation = \"tre-ghcr-proxy.nsh.loc:5000\"\ninsecure = true\n",
    );
    let n = name_with(&c, "tre-ghcr-proxy.nsh.loc:5000/ns/name:tag");
    assert_eq!(n.repository, "ghcr.io/ns/name");
    assert_eq!(n.tag.as_deref(), Some("tag"));
    assert!(n.is_mapped());
    assert_eq!(n.to_string(), "ghcr.io/ns/name:tag");
    // The upstream name is checked as itself.
    let n = name_with(&c, "ghcr.io/ns/name:tag");
    assert_eq!(n.repository, "ghcr.io/ns/name");
    assert!(!n.is_mapped());
    // Only at a path boundary.
    let n = name_with(&c, "tre-ghcr-proxy.nsh.loc:50000/ns/name:tag");
    assert_eq!(n.repository, "tre-ghcr-proxy.nsh.loc:50000/ns/name");

    let p = policy("[[image]]\nrepository = \"ghcr.io/ns/*\"\n");
    let approval = p
        .check_name(&name_with(&c, "tre-ghcr-proxy.nsh.loc:5000/ns/name:tag"))
        .unwrap();
    assert!(
        approval
            .explain()
            .starts_with("checked as ghcr.io/ns/name:tag: allowed by rule 1")
    );
    let err = p
        .check_name(&name_with(&c, "tre-ghcr-proxy.nsh.loc:5000/other/name:tag"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("tre-ghcr-proxy.nsh.loc:5000/other/name:tag is not on the approved list"),
        "{err}"
    );
    assert!(err.contains("checked as ghcr.io/other/name:tag"), "{err}");
    assert!(err.contains("repository = \"ghcr.io/other/name\""), "{err}");
}

#[test]
fn reverse_mapping_keeps_path_prefixes_and_the_longest_location_wins() {
    let c = config(
        "[[registry]]\nprefix = \"ghcr.io/lab\"\nlocation = \"mirror:5000/cache/lab\"\n\
         [[registry]]\nprefix = \"quay.io\"\nlocation = \"mirror:5000\"\n",
    );
    let n = name_with(&c, &format!("mirror:5000/cache/lab/x@{D1}"));
    assert_eq!(n.repository, "ghcr.io/lab/x");
    assert_eq!(n.digest, Some(d(D1)));
    assert_eq!(
        name_with(&c, "mirror:5000/other/x:1").repository,
        "quay.io/other/x"
    );
}

#[test]
fn docker_hub_names_are_checked_normalised() {
    let p = policy("[[image]]\nrepository = \"docker.io/library/busybox\"\n");
    p.check_name(&name("busybox")).unwrap();
    assert!(bad("[[image]]\nrepository = \"busybox\"\n").contains("docker.io/library/busybox"));
}

#[test]
fn unknown_keys_are_errors_naming_the_key_the_line_and_the_file() {
    let err = bad("[[image]]\nrepository = \"ghcr.io/lab/x\"\ntag = [\"v1\"]\n");
    assert!(
        err.starts_with(&format!("approved-image list {LIST}: line 3:")),
        "{err}"
    );
    assert!(err.contains("tag"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let err = bad("[[images]]\nrepository = \"ghcr.io/lab/x\"\n");
    assert!(err.contains("images") && err.contains(LIST), "{err}");
}

#[test]
fn malformed_lists_fail_closed() {
    for (text, needle) in [
        ("[[image]\n", "line 1"),
        ("[[image]]\ntags = [\"v1\"]\n", "repository"),
        (
            "[[image]]\nrepository = \"ghcr.io/x\"\ndigest = \"sha256:abc\"\n",
            "sha256:abc",
        ),
        (
            "[[image]]\nrepository = \"ghcr.io/x\"\ndigest = \"md5:abc\"\n",
            "md5",
        ),
        (
            "[[image]]\nrepository = \"ghcr.io/x:v1\"\n",
            "put it in `tags`",
        ),
        (
            "[[image]]\nrepository = \"ghcr.io/x@sha256:ab\"\n",
            "put it in `digest`",
        ),
        ("[[image]]\nrepository = \"https://ghcr.io/x\"\n", "scheme"),
        (
            "[[image]]\nrepository = \"ghcr.io/x\"\ntags = []\n",
            "approves nothing",
        ),
        (
            "[[image]]\nrepository = \"ghcr.io/x\"\ntags = \"v1\"\n",
            "line 3",
        ),
        ("[[image]]\nrepository = 5\n", "line 2"),
    ] {
        let err = bad(text);
        assert!(
            err.contains(LIST) && err.contains(needle),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn an_empty_list_approves_nothing() {
    let p = policy("# nothing approved yet\n");
    assert!(p.rules.is_empty());
    assert!(p.check_name(&name("ghcr.io/lab/x:v1")).is_err());
}

#[test]
fn enforce_is_off_without_a_list_and_fails_closed_on_a_missing_one() {
    let image = ImageRef::parse("ghcr.io/lab/x:v1", &Config::default()).unwrap();
    assert!(enforce(&Config::default(), &image).unwrap().is_none());

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("approved.toml");
    let c = config(&format!("approved_images = {missing:?}\n"));
    let err = enforce(&c, &image).unwrap_err();
    assert!(matches!(err, Error::Policy { .. }));
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    assert!(err.to_string().contains("cannot read it"), "{err}");

    std::fs::write(&missing, "[[image]]\nrepository = \"ghcr.io/lab/*\"\n").unwrap();
    let approval = enforce(&c, &image).unwrap().unwrap();
    assert_eq!(approval.list, missing);
}

#[test]
fn a_relative_list_is_found_next_to_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("approved.toml"), "").unwrap();
    let c = Config::parse(
        "approved_images = \"approved.toml\"\n",
        &dir.path().join("config.toml"),
    )
    .unwrap();
    assert_eq!(list_path(&c).unwrap(), dir.path().join("approved.toml"));
}
