fn main() -> std::process::ExitCode {
    lazyimg::cli::main()
}
