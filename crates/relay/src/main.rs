//! The `jex-relay` binary: see the library's docs.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    jex_relay::cli::main()
}
