//! `ordersys-order`: load config, set up logs, run until SIGTERM/Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ordersys_kit::telemetry::init("order");
    let config = ordersys_order::Config::load()?;
    tracing::info!(config = ?config, "конфигурация загружена");
    let listeners = ordersys_order::Listeners::bind(&config.grpc_addr, &config.admin_addr).await?;
    ordersys_order::run(config, listeners, ordersys_kit::shutdown::signal()).await
}
