//! Placeholder: the policy subcommands are being written.
macro_rules! cmd { ($($f:ident $a:ident),*) => { $(
    #[derive(clap::Args)] pub struct $a {}
    pub fn $f(_a: $a) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
)* } }
cmd!(catalogs CatalogsArgs, roles RolesArgs, flows FlowsArgs, compile CompileArgs, explain ExplainArgs);
