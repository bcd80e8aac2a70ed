//! `ordersys`: the whole system — gateway, user, order and payment — in one process.
//! Run: `cargo run --release -p ordersys`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ordersys_kit::telemetry::init("ordersys");
    let config = ordersys::Config::load()?;
    ordersys::run(config, ordersys_kit::shutdown::signal()).await
}
