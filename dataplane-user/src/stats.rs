#[derive(clap::Args, Default)]
pub struct StatsArgs {}

pub fn stats(_a: StatsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
