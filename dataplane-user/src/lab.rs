#[derive(clap::Args, Default)]
pub struct LabArgs {}

pub fn lab(_a: LabArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
