fn main() -> anyhow::Result<()> {
    sluice_edge::cli::main()
}
