//! `lazyimg run --runtime charliecloud --gpus all` (issue 13, acceptance 1):
//! lazyimg injects the host's NVIDIA user-space driver into the lazy mount.
//! No GPU here, so a fake host driver stands in: stub libraries with real
//! sonames and a stub `nvidia-smi` linked against one, built with gcc by the
//! test, and a device node made with mknod, pointed at by the test-only
//! settings `LAZYIMG_TEST_NVIDIA_DRIVER_DIR` and `LAZYIMG_TEST_GPU_DEV_DIR`.
//! The image is the Debian 12 image of scripts/build-debian-image.sh on the
//! local plain registry.
//!
//! Needs root (FUSE, mknod), ch-run and gcc.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::pushed::sh;
use support::testenv::{Lazyimg, nonce, testenv};

/// The fixture: `driver/lib` (libnvidia-ml.so.1, libcuda.so.1), `driver/bin`
/// (nvidia-smi), `dev/nvidia0`, and `prog/dlopen`, a program that dlopen()s
/// libcuda.so.1 and prints the path the loader resolved it to.
fn build_fixture(dir: &Path) {
    let script = format!(
        r#"set -e
cd {dir}
mkdir -p driver/lib driver/bin dev prog build
cat > build/ml.c <<'EOF'
const char *stub_driver(void) {{ return "stub driver 550.54"; }}
EOF
cat > build/cuda.c <<'EOF'
int cuInit(unsigned flags) {{ return (int)flags; }}
EOF
cat > build/smi.c <<'EOF'
#include <stdio.h>
const char *stub_driver(void);
int main(void) {{ printf("nvidia-smi: %s\n", stub_driver()); return 0; }}
EOF
cat > build/dlopen.c <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {{ printf("dlopen: %s\n", dlerror()); return 1; }}
    struct link_map *map;
    dlinfo(h, RTLD_DI_LINKMAP, &map);
    int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    char *real = realpath(map->l_name, NULL);
    printf("%s %d\n", real ? real : map->l_name, init(7));
    return 0;
}}
EOF
gcc -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o driver/lib/libnvidia-ml.so.1 build/ml.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o driver/lib/libcuda.so.1 build/cuda.c
ln -sf ../driver/lib/libnvidia-ml.so.1 build/libnvidia-ml.so
gcc -o driver/bin/nvidia-smi build/smi.c -Lbuild -lnvidia-ml
gcc -o prog/dlopen build/dlopen.c -ldl
cp driver/bin/nvidia-smi prog/host-nvidia-smi
mknod dev/nvidia0 c 195 0
chmod -R a+rX .
"#,
        dir = dir.display()
    );
    sh(&script);
}

/// `lazyimg run --runtime charliecloud [--gpus all] --bind PROG:/mnt REF --
/// sh -c SCRIPT` with the fixture standing in for the host.
fn run(lazyimg: &Lazyimg, fixture: &Path, gpus: bool, reference: &str, script: &str) -> Output {
    let mut cmd = lazyimg.cmd();
    cmd.env("USER", "root")
        .env("LAZYIMG_TEST_NVIDIA_DRIVER_DIR", fixture.join("driver"))
        .env("LAZYIMG_TEST_GPU_DEV_DIR", fixture.join("dev"))
        .args(["-q", "run", "--runtime", "charliecloud"]);
    if gpus {
        cmd.args(["--gpus", "all"]);
    }
    cmd.arg("--bind")
        .arg(format!("{}:/mnt", fixture.join("prog").display()))
        .args([reference, "--", "sh", "-c", script]);
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn charliecloud_gets_the_host_driver_injected_into_the_lazy_mount() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let layout = work.path().join("debian");
    let out = Command::new(scripts.join("build-debian-image.sh"))
        .arg(&layout)
        .arg("gpu")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = format!("{}/gpu/debian-{}:v1", env.plain(), nonce());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:gpu docker://{reference}",
        layout.display()
    ));
    let fixture = tempfile::Builder::new()
        .prefix("lazyimg-gpu-")
        .tempdir_in("/tmp")
        .unwrap();
    build_fixture(fixture.path());

    let lazyimg = Lazyimg::new(env);
    // The stub nvidia-smi runs and finds its library through the loader; a
    // dlopen() of libcuda.so.1 resolves to the injected file.
    let out = stdout(&run(
        &lazyimg,
        fixture.path(),
        true,
        &reference,
        "nvidia-smi; /mnt/dlopen",
    ));
    assert_eq!(
        out,
        "nvidia-smi: stub driver 550.54\n/usr/lib/x86_64-linux-gnu/libcuda.so.1 7\n"
    );
    // The injected files are the host's, read-only.
    let out = stdout(&run(
        &lazyimg,
        fixture.path(),
        true,
        &reference,
        "cmp /usr/bin/nvidia-smi /mnt/host-nvidia-smi && echo same; \
         touch /usr/bin/nvidia-smi 2>/dev/null || echo read-only",
    ));
    assert_eq!(out, "same\nread-only\n");

    // Everything else is the image's: the listing differs by the injected
    // files only.
    let list = "find / -xdev -printf '%p %y %m %s %U %G\\n' | sort";
    let with = stdout(&run(&lazyimg, fixture.path(), true, &reference, list));
    let without = stdout(&run(&lazyimg, fixture.path(), false, &reference, list));
    let with: Vec<&str> = with.lines().collect();
    let without: Vec<&str> = without.lines().collect();
    let added: Vec<&str> = with
        .iter()
        .filter(|l| !without.contains(l))
        .copied()
        .collect();
    let removed: Vec<&str> = without
        .iter()
        .filter(|l| !with.contains(l))
        .copied()
        .collect();
    assert_eq!(removed, Vec::<&str>::new());
    let added_paths: Vec<&str> = added.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        added_paths,
        [
            "/usr/bin/nvidia-smi",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
        ],
        "{added:#?}"
    );
    // Without a GPU device, --gpus stops before anything starts.
    let no_gpu = lazyimg
        .cmd()
        .env("USER", "root")
        .env("LAZYIMG_TEST_GPU_DEV_DIR", work.path())
        .args([
            "-q",
            "run",
            "--runtime",
            "charliecloud",
            "--gpus",
            "all",
            &reference,
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(no_gpu.status.code(), Some(125));
}
