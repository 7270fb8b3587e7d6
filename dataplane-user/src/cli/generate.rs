//! `dataplane generate --out DIR` (hidden): the man pages and shell completions of this command
//! line, generated from its clap definitions so that they never drift from `--help`. The package
//! build (`cargo xtask package`) runs it on the release binary.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write into: DIR/man1/*.1 (one page per subcommand) and
    /// DIR/completions/{dataplane.bash,_dataplane,dataplane.fish}.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// The shells completions are written for, with the file name each one's loader looks for.
const SHELLS: [(Shell, &str); 3] = [(Shell::Bash, "dataplane.bash"), (Shell::Zsh, "_dataplane"), (Shell::Fish, "dataplane.fish")];

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let man = a.out.join("man1");
    create(&man)?;
    clap_mangen::generate_to(Cli::command(), &man).with_context(|| format!("writing the man pages into {}", man.display()))?;
    let completions = a.out.join("completions");
    create(&completions)?;
    for (shell, file) in SHELLS {
        let path = completions.join(file);
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_complete::generate(shell, &mut Cli::command(), "dataplane", &mut f);
    }
    Ok(())
}

fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
