use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

use super::*;

fn host() -> HostEnv {
    HostEnv {
        term: Some("xterm-256color".into()),
        home: Some("/home/alice".into()),
        user: Some("alice".into()),
        apptainer_env_names: vec!["APPTAINERENV_STALE".into(), "SINGULARITYENV_OLD".into()],
        vars: [
            ("SLURM_JOB_ID", "42"),
            ("SLURM_NTASKS", "4"),
            ("GHCR_TOKEN", "secret"),
            ("CUDA_VISIBLE_DEVICES", "2,3"),
            ("OMP_NUM_THREADS", "8"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
        gpu: GpuHost::default(),
    }
}

fn spec() -> RunSpec {
    RunSpec {
        rootfs: "/run/lazyimg/debian".into(),
        command: vec!["sh".into(), "-c".into(), "echo $A".into()],
        image_env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "LAZYIMG_IMAGE_ENV=from-image".into(),
            "A=image".into(),
        ],
        env: vec![
            ("A".into(), "cli".into()),
            ("B".into(), "x y,z $HOME 'q'".into()),
        ],
        env_host: Vec::new(),
        gpus: None,
        binds: vec![Bind::new("/scratch/alice", "/mnt")],
        workdir: Some("/work".into()),
        user: Some("1000:1000".into()),
        tty: false,
        host: host(),
    }
}

fn argv(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Variables the command sets (`Some`) or removes (`None`) in the runtime's environment.
fn envs(cmd: &Command) -> BTreeMap<String, Option<String>> {
    cmd.get_envs()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.map(|v| v.to_string_lossy().into_owned()),
            )
        })
        .collect()
}

#[test]
fn effective_env_follows_the_policy() {
    let s = spec();
    assert_eq!(
        s.effective_env(Runtime::Podman),
        [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("LAZYIMG_IMAGE_ENV", "from-image"),
            ("A", "cli"),
            ("B", "x y,z $HOME 'q'"),
            ("TERM", "xterm-256color"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );

    // No PATH anywhere: the default; TERM set by the image wins over the host's;
    // entries without '=' are ignored; no host TERM, none added.
    let mut s = spec();
    s.image_env = vec!["TERM=dumb".into(), "BARE".into(), "=x".into()];
    s.env.clear();
    assert_eq!(
        s.effective_env(Runtime::Podman),
        [("TERM", "dumb"), ("PATH", DEFAULT_PATH)].map(|(k, v)| (k.to_string(), v.to_string()))
    );
    s.image_env.clear();
    s.host.term = None;
    assert_eq!(
        s.effective_env(Runtime::Podman),
        [("PATH".to_string(), DEFAULT_PATH.to_string())]
    );

    // A later --env replaces an earlier one, in the first one's place.
    let mut s = spec();
    s.image_env.clear();
    s.host.term = None;
    s.env = vec![
        ("X".into(), "1".into()),
        ("Y".into(), "2".into()),
        ("X".into(), "3".into()),
    ];
    assert_eq!(
        s.effective_env(Runtime::Podman),
        [("X", "3"), ("Y", "2"), ("PATH", DEFAULT_PATH)]
            .map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

#[test]
fn podman_argv() {
    let cmd = command(Runtime::Podman, &spec()).unwrap();
    assert_eq!(
        argv(&cmd),
        [
            "podman",
            "run",
            "--rm",
            "-i",
            "--network",
            "host",
            "--log-driver",
            "none",
            "--unsetenv-all",
            "--env",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "--env",
            "LAZYIMG_IMAGE_ENV=from-image",
            "--env",
            "A=cli",
            "--env",
            "B=x y,z $HOME 'q'",
            "--env",
            "TERM=xterm-256color",
            "--volume",
            "/scratch/alice:/mnt",
            "--workdir",
            "/work",
            "--user",
            "1000:1000",
            "--rootfs",
            "/run/lazyimg/debian:O",
            "sh",
            "-c",
            "echo $A",
        ]
    );
    assert!(
        envs(&cmd).is_empty(),
        "podman's own environment is left alone"
    );

    let mut s = spec();
    s.tty = true;
    s.workdir = None;
    let a = argv(&command(Runtime::Podman, &s).unwrap());
    assert_eq!(a[1..5], ["run", "--rm", "-i", "-t"]);
    assert!(a.windows(2).any(|w| w == ["--workdir", "/"]));

    s.rootfs = "/run/lazyimg/ghcr.io:tag".into();
    assert!(matches!(
        command(Runtime::Podman, &s),
        Err(RuntimeError::InvalidSpec(_))
    ));
}

#[test]
fn charliecloud_argv() {
    let cmd = command(Runtime::Charliecloud, &spec()).unwrap();
    assert_eq!(
        argv(&cmd),
        [
            "ch-run",
            "--unset-env=*",
            "--env-no-expand",
            "--set-env=HOME='/home/alice'",
            "--set-env=USER='alice'",
            "--set-env=PATH='/usr/local/bin:/usr/bin:/bin'",
            "--set-env=LAZYIMG_IMAGE_ENV='from-image'",
            "--set-env=A='cli'",
            "--set-env=B='x y,z $HOME 'q''",
            "--set-env=TERM='xterm-256color'",
            "-b",
            "/scratch/alice:/mnt",
            "-c",
            "/work",
            "/run/lazyimg/debian",
            "--",
            "sh",
            "-c",
            "echo $A",
        ]
    );
    // ch-run refuses to start without $USER.
    assert_eq!(
        envs(&cmd),
        BTreeMap::from([("USER".into(), Some("alice".into()))])
    );

    // HOME/USER from the image or --env replace the host's.
    let mut s = spec();
    s.env = vec![("HOME".into(), "/root".into())];
    s.binds.clear();
    s.host.term = None;
    let a = argv(&command(Runtime::Charliecloud, &s).unwrap());
    assert_eq!(
        a[1..8],
        [
            "--unset-env=*",
            "--env-no-expand",
            "--set-env=USER='alice'",
            "--set-env=PATH='/usr/local/bin:/usr/bin:/bin'",
            "--set-env=LAZYIMG_IMAGE_ENV='from-image'",
            "--set-env=A='image'",
            "--set-env=HOME='/root'",
        ]
    );
    assert_eq!(
        a[8..],
        [
            "-c",
            "/work",
            "/run/lazyimg/debian",
            "--",
            "sh",
            "-c",
            "echo $A"
        ]
    );
}

#[test]
fn apptainer_argv() {
    let mut s = spec();
    s.env.push(("HOME".into(), "/root".into()));
    let cmd = command(Runtime::Apptainer, &s).unwrap();
    assert_eq!(
        argv(&cmd),
        [
            "apptainer",
            "exec",
            "--cleanenv",
            "--no-eval",
            "--bind",
            "/scratch/alice:/mnt",
            "--pwd",
            "/work",
            "/run/lazyimg/debian",
            "sh",
            "-c",
            "echo $A",
        ]
    );
    let mut want: BTreeMap<String, Option<String>> = APPTAINER_ALWAYS_PASSED
        .iter()
        .map(|k| (k.to_string(), None))
        .collect();
    want.insert("APPTAINERENV_STALE".into(), None);
    want.insert("SINGULARITYENV_OLD".into(), None);
    for (k, v) in [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LAZYIMG_IMAGE_ENV", "from-image"),
        ("A", "cli"),
        ("B", "x y,z $HOME 'q'"),
        ("TERM", "xterm-256color"),
    ] {
        want.insert(format!("APPTAINERENV_{k}"), Some(v.into()));
    }
    // No APPTAINERENV_HOME: apptainer refuses it.
    assert_eq!(envs(&cmd), want);
}

#[test]
fn specs_no_runtime_can_express_are_refused() {
    type Change = Box<dyn Fn(&mut RunSpec)>;
    let cases: Vec<(&str, Change)> = vec![
        ("relative rootfs", Box::new(|s| s.rootfs = "rootfs".into())),
        ("empty command", Box::new(|s| s.command.clear())),
        (
            "empty env name",
            Box::new(|s| s.env.push((String::new(), "v".into()))),
        ),
        (
            "'=' in env name",
            Box::new(|s| s.env.push(("A=B".into(), "v".into()))),
        ),
        (
            "relative bind source",
            Box::new(|s| s.binds.push(Bind::new("data", "/mnt"))),
        ),
        (
            "relative bind target",
            Box::new(|s| s.binds.push(Bind::new("/data", "mnt"))),
        ),
        (
            "':' in bind",
            Box::new(|s| s.binds.push(Bind::new("/a:b", "/mnt"))),
        ),
        (
            "',' in bind",
            Box::new(|s| s.binds.push(Bind::new("/a,b", "/mnt"))),
        ),
        (
            "relative workdir",
            Box::new(|s| s.workdir = Some("work".into())),
        ),
    ];
    for (what, change) in cases {
        let mut s = spec();
        change(&mut s);
        for runtime in Runtime::ALL {
            assert!(
                matches!(command(runtime, &s), Err(RuntimeError::InvalidSpec(_))),
                "{what} accepted by {runtime}"
            );
        }
    }
}

#[test]
fn runtime_and_bind_names_parse() {
    for (name, want) in [
        ("podman", Runtime::Podman),
        ("charliecloud", Runtime::Charliecloud),
        ("ch-run", Runtime::Charliecloud),
        ("apptainer", Runtime::Apptainer),
        ("singularity", Runtime::Apptainer),
        ("Podman", Runtime::Podman),
    ] {
        assert_eq!(name.parse::<Runtime>().unwrap(), want, "{name}");
    }
    let err = "docker".parse::<Runtime>().unwrap_err();
    assert!(err.hint().unwrap().contains("charliecloud"));
    for r in Runtime::ALL {
        assert_eq!(r.to_string().parse::<Runtime>().unwrap(), r);
    }

    assert_eq!(
        "/data:/mnt".parse::<Bind>().unwrap(),
        Bind::new("/data", "/mnt")
    );
    assert_eq!(
        "/data".parse::<Bind>().unwrap(),
        Bind::new("/data", "/data")
    );
    assert_eq!(
        "/data:/mnt:ro".parse::<Bind>().unwrap(),
        Bind::new("/data", "/mnt").read_only()
    );
    assert_eq!(
        "/data:/mnt:rw".parse::<Bind>().unwrap(),
        Bind::new("/data", "/mnt")
    );
    assert!("/a:/b:/c".parse::<Bind>().is_err());
    assert!("/a:/b:rx".parse::<Bind>().is_err());
    assert!("data:/mnt".parse::<Bind>().is_err());
}

#[test]
fn exit_code_is_what_a_shell_reports() {
    assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
    assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
    assert_eq!(exit_code(ExitStatus::from_raw(255 << 8)), 255);
    assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGSEGV | 0x80)), 139); // core dumped
}

#[test]
fn missing_runtime_is_reported_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apptainer");
    std::fs::write(&path, "#!/bin/sh\n").unwrap();
    assert_eq!(
        find_program("apptainer", dir.path().as_os_str()),
        None,
        "not executable"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let search = std::env::join_paths(["/nonexistent".as_ref(), dir.path()]).unwrap();
    assert_eq!(find_program("apptainer", &search), Some(path));
    assert_eq!(find_program("ch-run", &search), None);

    let err = RuntimeError::NotInstalled {
        runtime: Runtime::Apptainer,
        program: "apptainer",
    };
    assert_eq!(
        err.to_string(),
        "apptainer (apptainer) is not installed or not on PATH"
    );
    assert!(err.hint().unwrap().contains("not packaged for Debian 12"));
}

#[test]
fn charliecloud_bind_targets_must_exist_and_not_be_host_bound() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("mnt")).unwrap();
    let mut s = spec();
    s.rootfs = root.path().to_path_buf();
    s.binds = vec![Bind::new("/srv", "/mnt"), Bind::new("/srv", "/data")];
    let err = check_binds(Runtime::Charliecloud, &s).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bind target /data does not exist in the image; charliecloud cannot create it"
    );
    assert!(err.hint().unwrap().contains("/mnt"));
    for r in [Runtime::Podman, Runtime::Apptainer] {
        check_binds(r, &s).unwrap();
    }

    s.binds = vec![Bind::new("/srv", "/tmp/x")];
    assert!(matches!(
        check_binds(Runtime::Charliecloud, &s),
        Err(RuntimeError::HostBoundTarget { shared: "/tmp", .. })
    ));
    s.binds = vec![Bind::new("/srv", "/mnt")];
    check_binds(Runtime::Charliecloud, &s).unwrap();
}

#[test]
fn missing_and_unrunnable_commands_are_found_before_starting() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["usr/bin", "bin", "mnt", "work"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let write = |path: &str, mode: u32| {
        std::fs::write(r.join(path), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(r.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("usr/bin/tool", 0o755);
    write("bin/data", 0o644);
    write("work/local", 0o755);
    let mut s = spec();
    s.rootfs = r.to_path_buf();
    s.image_env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()];
    let status = |s: &RunSpec, rt: Runtime, cmd: &str| {
        let mut s = s.clone();
        s.command = vec![cmd.into()];
        check_command(rt, &s).map_err(|e| (e.exit_status(), e.to_string()))
    };
    for rt in [Runtime::Charliecloud, Runtime::Apptainer] {
        assert_eq!(status(&s, rt, "tool"), Ok(()), "{rt}");
        assert_eq!(status(&s, rt, "/usr/bin/tool"), Ok(()), "{rt}");
        assert_eq!(
            status(&s, rt, "./local"),
            Ok(()),
            "{rt}: relative to the workdir"
        );
        assert_eq!(
            status(&s, rt, "nope"),
            Err((127, "nope: command not found in the image".into())),
            "{rt}"
        );
        assert_eq!(
            status(&s, rt, "data"),
            Err((126, "/bin/data: is not executable: cannot run it".into())),
            "{rt}"
        );
        assert_eq!(status(&s, rt, "/usr").unwrap_err().0, 126, "{rt}");
        // Under a bind or a host-bound path lazyimg cannot see: the runtime decides.
        assert_eq!(status(&s, rt, "/mnt/x"), Ok(()), "{rt}");
        assert_eq!(status(&s, rt, "/tmp/x"), Ok(()), "{rt}");
    }
    // Podman reports 126/127 itself.
    assert_eq!(status(&s, Runtime::Podman, "nope"), Ok(()));
    // A relative PATH entry: execvp's search depends on the working directory.
    s.env = vec![("PATH".into(), "/usr/bin:bin".into())];
    assert_eq!(status(&s, Runtime::Charliecloud, "nope"), Ok(()));

    let e = RuntimeError::InvalidSpec("x".into());
    assert_eq!(e.exit_status(), 125);
}

#[test]
fn read_only_binds_are_honoured_or_refused() {
    let mut s = spec();
    s.binds = vec![Bind::new("/scratch/alice", "/mnt").read_only()];
    for (rt, flag) in [
        (Runtime::Podman, "--volume"),
        (Runtime::Apptainer, "--bind"),
    ] {
        let a = argv(&command(rt, &s).unwrap());
        assert!(
            a.windows(2).any(|w| w == [flag, "/scratch/alice:/mnt:ro"]),
            "{rt}: {a:?}"
        );
    }
    // ch-run 0.31 has no read-only binds: refused, not silently read-write.
    let e = command(Runtime::Charliecloud, &s).unwrap_err();
    assert_eq!(e.to_string(), "charliecloud cannot bind /mnt read-only");
    assert_eq!(e.exit_status(), 125);
    assert!(e.hint().unwrap().contains("--runtime podman"));
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn env_host_passes_named_host_variables_only() {
    let mut s = spec();
    s.image_env = vec!["OMP_NUM_THREADS=1".into()];
    s.env = vec![("SLURM_NTASKS".into(), "1".into())];
    s.host.term = None;
    s.env_host = vec!["SLURM_*".into(), "OMP_NUM_THREADS".into(), "UNSET".into()];
    // The host's value replaces the image's; --env still wins; no GHCR_TOKEN.
    let want = pairs(&[
        ("OMP_NUM_THREADS", "8"),
        ("SLURM_JOB_ID", "42"),
        ("SLURM_NTASKS", "1"),
        ("PATH", DEFAULT_PATH),
    ]);
    for rt in Runtime::ALL {
        assert_eq!(s.effective_env(rt), want, "{rt}");
    }
    for bad in ["", "A=B", "A\0"] {
        s.env_host = vec![bad.into()];
        assert!(
            matches!(s.validate(), Err(RuntimeError::InvalidSpec(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn gpus_pass_the_selection_each_runtime_needs() {
    let mut s = spec();
    s.image_env.clear();
    s.env.clear();
    s.host.term = None;
    s.host
        .vars
        .push(("NVIDIA_VISIBLE_DEVICES".into(), "all".into()));
    let path = ("PATH", DEFAULT_PATH);
    // Without --gpus the host's selection stays out.
    assert_eq!(s.effective_env(Runtime::Apptainer), pairs(&[path]));

    // all: the scheduler's allocation passes through.
    s.gpus = Some(Gpus::All);
    for rt in [Runtime::Podman, Runtime::Apptainer] {
        assert_eq!(
            s.effective_env(rt),
            pairs(&[
                ("CUDA_VISIBLE_DEVICES", "2,3"),
                ("NVIDIA_VISIBLE_DEVICES", "all"),
                path
            ]),
            "{rt}"
        );
    }
    // A list: podman's CDI devices are the selection, renumbered from 0 inside.
    s.gpus = Some("1,3".parse().unwrap());
    assert_eq!(s.effective_env(Runtime::Podman), pairs(&[path]));
    assert_eq!(
        s.effective_env(Runtime::Apptainer),
        pairs(&[
            ("CUDA_VISIBLE_DEVICES", "1,3"),
            ("NVIDIA_VISIBLE_DEVICES", "1,3"),
            path
        ])
    );
    // --nvccli exposes only the selected GPUs: CUDA's indices would be wrong.
    s.host.gpu.nvidia_container_cli = true;
    assert_eq!(
        s.effective_env(Runtime::Apptainer),
        pairs(&[("NVIDIA_VISIBLE_DEVICES", "1,3"), path])
    );
    // --env still has the last word.
    s.env = vec![("CUDA_VISIBLE_DEVICES".into(), "0".into())];
    assert_eq!(
        s.effective_env(Runtime::Apptainer),
        pairs(&[
            ("NVIDIA_VISIBLE_DEVICES", "1,3"),
            ("CUDA_VISIBLE_DEVICES", "0"),
            path
        ])
    );
}

#[test]
fn gpus_command_lines() {
    let mut s = spec();
    s.gpus = Some(Gpus::All);
    let a = argv(&command(Runtime::Podman, &s).unwrap());
    assert!(
        a.windows(2)
            .any(|w| w == ["--device", "nvidia.com/gpu=all"]),
        "{a:?}"
    );
    s.gpus = Some("0,2".parse().unwrap());
    let a = argv(&command(Runtime::Podman, &s).unwrap());
    let devices: Vec<&str> = a
        .windows(2)
        .filter(|w| w[0] == "--device")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(devices, ["nvidia.com/gpu=0", "nvidia.com/gpu=2"]);
    // Devices come before --rootfs: everything after its operand is the command.
    let rootfs = a.iter().position(|x| x == "--rootfs").unwrap();
    assert!(a.iter().position(|x| x == "--device").unwrap() < rootfs);

    let a = argv(&command(Runtime::Apptainer, &s).unwrap());
    assert_eq!(a[1..5], ["exec", "--cleanenv", "--no-eval", "--nv"]);
    s.host.gpu.nvidia_container_cli = true;
    let a = argv(&command(Runtime::Apptainer, &s).unwrap());
    assert_eq!(
        a[1..6],
        ["exec", "--cleanenv", "--no-eval", "--nv", "--nvccli"]
    );

    // Charliecloud adds no flag: the driver is in the mounted tree and the
    // devices in ch-run's /dev.
    let a = argv(&command(Runtime::Charliecloud, &s).unwrap());
    assert!(!a.iter().any(|x| x.contains("nvidia")), "{a:?}");

    // No --gpus, no GPU flags.
    s.gpus = None;
    let a = argv(&command(Runtime::Apptainer, &s).unwrap());
    assert!(!a.contains(&"--nv".to_string()));
    assert!(!argv(&command(Runtime::Podman, &s).unwrap()).contains(&"--device".to_string()));

    assert!("".parse::<Gpus>().is_err());
    assert!("0,x".parse::<Gpus>().is_err());
    assert_eq!("all".parse::<Gpus>().unwrap(), Gpus::All);
}

#[test]
fn gpus_without_a_gpu_or_cdi_spec_are_refused_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let cdi = dir.path().join("cdi");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(&cdi).unwrap();
    let host = GpuHost {
        dev_dir: dev.clone(),
        cdi_dirs: vec![cdi.clone(), dir.path().join("run-cdi")],
        nvidia_container_cli: false,
        driver_dir: None,
    };
    let all = Some(&Gpus::All);
    for rt in Runtime::ALL {
        check_gpus(rt, None, &host).unwrap();
    }
    // nvidiactl alone is no GPU.
    std::fs::write(dev.join("nvidiactl"), "").unwrap();
    let e = check_gpus(Runtime::Apptainer, all, &host).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "--gpus: no NVIDIA GPU on this host ({}/nvidia0 does not exist)",
            dev.display()
        )
    );
    assert_eq!(e.exit_status(), 125);
    assert!(e.hint().unwrap().contains("GPU node"));

    std::fs::write(dev.join("nvidia0"), "").unwrap();
    check_gpus(Runtime::Apptainer, all, &host).unwrap();
    let e = check_gpus(Runtime::Podman, all, &host).unwrap_err();
    assert!(matches!(e, RuntimeError::NoCdiSpec(_)), "{e}");
    assert!(
        e.to_string().ends_with(&format!(
            "none in {} or {}/run-cdi",
            cdi.display(),
            dir.path().display()
        )),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("nvidia-ctk cdi generate"));
    // A spec of another kind does not count; nvidia-ctk's does.
    std::fs::write(cdi.join("other.yaml"), "kind: example.com/fpga\n").unwrap();
    assert!(check_gpus(Runtime::Podman, all, &host).is_err());
    std::fs::write(
        cdi.join("nvidia.yaml"),
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n",
    )
    .unwrap();
    check_gpus(Runtime::Podman, all, &host).unwrap();

    // Charliecloud needs driver libraries to inject: none in an empty fixture.
    let empty = tempfile::tempdir().unwrap();
    let no_driver = GpuHost {
        driver_dir: Some(empty.path().to_path_buf()),
        ..host.clone()
    };
    let e = check_gpus(Runtime::Charliecloud, all, &no_driver).unwrap_err();
    assert!(matches!(e, RuntimeError::NoGpuDriver), "{e}");
    assert_eq!(e.exit_status(), 125);
}

#[test]
fn host_values_stay_out_of_debug_output() {
    let shown = format!("{:?}", spec());
    assert!(shown.contains("GHCR_TOKEN"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}
