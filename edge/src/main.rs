/// The edge allocates a few small buffers per event (IDs, normalized JSON); glibc malloc showed
/// up as ~12% of the edge's CPU under load, mimalloc costs a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    sluice_edge::cli::main()
}
