fn main() -> anyhow::Result<()> {
    sluice_core::cli::main()
}
