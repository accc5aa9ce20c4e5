//! sluicectl: the Sluice operator CLI.

/// Same allocator as the `sluice-edge` binary, so `sluicectl dev` and `bench` measure the edge as
/// it is shipped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    sluice_ops::cli::main()
}
