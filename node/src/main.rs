// mimalloc keeps freed memory for reuse: with glibc's malloc the link lanes'
// 64 KiB blocks were handed back to the kernel and faulted in again
// (measured: 26k page faults while sending 600 MB to a peer).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    catga_node::cli::main()
}
