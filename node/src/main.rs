// mimalloc keeps freed memory for reuse: with glibc's malloc the link lanes'
// 64 KiB blocks were handed back to the kernel and faulted in again, which
// cost ~1/6 of a page fault per KiB sent to a peer.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    catga_node::cli::main()
}
