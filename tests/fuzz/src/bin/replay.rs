//! Runs a fuzz target's body over files, without AFL: `replay TARGET PATH...`
//! (a directory stands for the files in it). Reproduces a finding with a
//! backtrace (`RUST_BACKTRACE=1`), or checks a corpus.
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let Some(&(_, target)) = lazyimg_fuzz::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = lazyimg_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: replay TARGET PATH...; targets: {}", names.join(" "));
        std::process::exit(2);
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for path in args.map(PathBuf::from) {
        match std::fs::read_dir(&path) {
            Ok(dir) => files.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_file())),
            Err(_) => files.push(path),
        }
    }
    files.sort();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        eprintln!("{name}: {}", file.display());
        target(&data);
    }
    eprintln!("{name}: {} inputs, no panic", files.len());
}
