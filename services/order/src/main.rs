//! `ordersys-order`: load config, set up logs, run until SIGTERM/Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ordersys_kit::telemetry::init("order");
    let config = ordersys_order::Config::load()?;
    // `ordersys-order migrate`: apply the migrations and exit (`make migrate`).
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        ordersys_order::migrate(&config).await?;
        tracing::info!("миграции применены");
        return Ok(());
    }
    tracing::info!(config = ?config, "конфигурация загружена");
    let listeners = ordersys_order::Listeners::bind(&config.grpc_addr, &config.admin_addr).await?;
    ordersys_order::run(config, listeners, ordersys_kit::shutdown::signal()).await
}
