//! The `jex-agent` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    jex_agent::cli::main()
}
