//! `ordersys`: the whole system — gateway, user, order and payment — in one process.
//! Run: `cargo run --release -p ordersys`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if ordersys_kit::cli::help_requested() {
        print!(
            "{}",
            ordersys_kit::cli::usage::<ordersys::Config>(
                "ordersys",
                "the whole ordersys system (gateway, user, order, payment) in one process; \
                 embedded (SQLite, in-process bus) unless DATABASE_URL, KAFKA_BROKERS and \
                 REDIS_URL are set",
                &["serve"],
            )
        );
        return Ok(());
    }
    let _telemetry = ordersys_kit::telemetry::init("ordersys");
    let config = ordersys::Config::load()?;
    ordersys::run(config, ordersys_kit::shutdown::signal()).await
}
