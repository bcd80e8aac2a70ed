//! `ordersys-gateway`: load config, set up logs, serve until SIGTERM/Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if ordersys_kit::cli::help_requested() {
        print!(
            "{}",
            ordersys_kit::cli::usage::<ordersys_gateway::Config>(
                "ordersys-gateway",
                "the ordersys REST gateway (SPEC §8)",
                &["serve"],
            )
        );
        return Ok(());
    }
    let _telemetry = ordersys_kit::telemetry::init("gateway");
    let config = ordersys_gateway::Config::load()?;
    tracing::info!(config = ?config, "конфигурация загружена");
    let listener = tokio::net::TcpListener::bind(&config.http_addr).await?;
    ordersys_gateway::run(config, listener, ordersys_kit::shutdown::signal()).await
}
