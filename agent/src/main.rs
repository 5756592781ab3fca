//! The `jex-agent` binary: everything lives in the library; see `cli`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    jex_agent::cli::main()
}
