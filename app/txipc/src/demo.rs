//! `txipc demo` (being written).

/// Arguments of `txipc demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo: not built yet")
}
