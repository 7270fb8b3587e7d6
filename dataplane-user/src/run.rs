#[derive(clap::Args, Default)]
pub struct RunArgs {}

pub fn run(_a: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
