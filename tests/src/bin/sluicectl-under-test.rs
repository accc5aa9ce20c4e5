//! The `sluicectl` binary, built inside this package so tests can run operator commands (the
//! runbook's) as a shell would.
fn main() -> anyhow::Result<()> {
    sluice_ops::cli::main()
}
