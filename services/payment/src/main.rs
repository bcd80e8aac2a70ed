//! `ordersys-payment`: load config, set up logs, run until SIGTERM/Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ordersys_kit::telemetry::init("payment");
    let config = ordersys_payment::Config::load()?;
    // `ordersys-payment migrate`: apply the migrations and exit (`make migrate`).
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        ordersys_payment::migrate(&config).await?;
        tracing::info!("миграции применены");
        return Ok(());
    }
    // `ordersys-payment topics`: create the missing saga topics and exit (the
    // Kubernetes topics Job).
    if std::env::args().nth(1).as_deref() == Some("topics") {
        return config.kafka.provision_topics().await;
    }
    tracing::info!(config = ?config, "конфигурация загружена");
    let listeners =
        ordersys_payment::Listeners::bind(&config.listen.grpc_addr, &config.listen.admin_addr)
            .await?;
    ordersys_payment::run(config, listeners, ordersys_kit::shutdown::signal()).await
}
