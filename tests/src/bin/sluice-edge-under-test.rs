//! The `sluice-edge` binary, built inside this package so tests can spawn (and `kill -9`) it.
fn main() -> anyhow::Result<()> {
    sluice_edge::cli::main()
}
