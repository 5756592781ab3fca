//! The relay's entry point, built under the name `jex-relay-e2e` for the end-to-end tests.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    jex_relay::cli::main()
}
