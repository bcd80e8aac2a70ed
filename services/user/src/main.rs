//! `ordersys-user`: load config, set up logs, run until SIGTERM/Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ordersys_kit::telemetry::init("user");
    let config = ordersys_user::Config::load()?;
    // `ordersys-user migrate`: apply the migrations and exit (`make migrate`).
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        ordersys_user::migrate(&config).await?;
        tracing::info!("миграции применены");
        return Ok(());
    }
    tracing::info!(config = ?config, "конфигурация загружена");
    let listeners =
        ordersys_user::Listeners::bind(&config.listen.grpc_addr, &config.listen.admin_addr).await?;
    ordersys_user::run(config, listeners, ordersys_kit::shutdown::signal()).await
}
