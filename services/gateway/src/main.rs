//! `ordersys-gateway`: load config, set up logs, serve until SIGTERM/Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if ordersys_kit::cli::help_requested() {
        print!(
            "{}",
            ordersys_kit::cli::usage::<ordersys_gateway::Config>(
                "ordersys-gateway",
                "the ordersys REST gateway (SPEC §8)",
                &["serve", "openapi"],
            )
        );
        return Ok(());
    }
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some("openapi") => {
            // For client generators and linters: no server needed.
            use utoipa::OpenApi as _;
            println!(
                "{}",
                ordersys_gateway::openapi::ApiDoc::openapi().to_pretty_json()?
            );
            return Ok(());
        }
        Some(other) => anyhow::bail!("unknown command {other:?}: expected serve | openapi"),
    }
    let _telemetry = ordersys_kit::telemetry::init("gateway");
    let config = ordersys_gateway::Config::load()?;
    tracing::info!(config = ?config, "конфигурация загружена");
    let listeners = ordersys_gateway::Listeners::bind(&config).await?;
    ordersys_gateway::run(config, listeners, ordersys_kit::shutdown::signal()).await
}
