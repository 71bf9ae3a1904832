//! `duplex autobahn-client`: runs every case of the Autobahn testsuite's fuzzingserver with the
//! duplex client, echoing each message, then asks it to write the reports.

use anyhow::Context as _;
use duplex::{ClientBuilder, Config, Message};

/// Options of `duplex autobahn-client`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The fuzzingserver's URL.
    #[arg(long, default_value = "ws://127.0.0.1:9001", env = "AUTOBAHN_URL")]
    url: String,
    /// The agent name the reports are filed under.
    #[arg(long, default_value = "duplex", env = "AUTOBAHN_AGENT")]
    agent: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(drive(args))
}

async fn drive(args: Args) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    let count: u32 = {
        let (mut ws, _) = duplex::connect(&format!("{base}/getCaseCount"))
            .await
            .context("getCaseCount")?;
        let reply = ws.recv().await.context("no case count")??;
        reply
            .as_text()
            .context("case count is not text")?
            .trim()
            .parse()?
    };
    tracing::info!(count, "running cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={}", args.agent);
        if let Err(e) = run_case(&url).await {
            tracing::debug!(case, error = %e, "case ended with an error");
        }
    }
    let (mut ws, _) = duplex::connect(&format!("{base}/updateReports?agent={}", args.agent))
        .await
        .context("updateReports")?;
    while ws.recv().await.is_some() {}
    tracing::info!("reports updated");
    Ok(())
}

async fn run_case(url: &str) -> duplex::Result<()> {
    let config = Config::default()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20);
    let (mut ws, _) = ClientBuilder::new(url).config(config).connect().await?;
    while let Some(message) = ws.recv().await {
        let message: Message = message?;
        ws.send(message).await?;
    }
    Ok(())
}
