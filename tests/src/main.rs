//! The agent's entry point, built under the name `jex-agent-e2e` for the end-to-end tests.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    jex_agent::cli::main()
}
