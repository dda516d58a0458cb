fn main() -> anyhow::Result<()> {
    catga_node::cli::main()
}
