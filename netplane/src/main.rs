fn main() -> std::process::ExitCode {
    netplane::cli::main()
}
