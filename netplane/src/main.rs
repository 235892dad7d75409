fn main() -> std::process::ExitCode {
    // A container runtime runs its CNI plugins with CNI_COMMAND set.
    if std::env::var_os(netplane::cni::CNI_COMMAND).is_some() {
        return netplane::cni::main();
    }
    netplane::cli::main()
}
