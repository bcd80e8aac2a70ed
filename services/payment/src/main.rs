//! `ordersys-payment`: `serve` (the default) until SIGTERM/Ctrl-C, `migrate`, `topics`
//! ([`ordersys_kit::cli`]).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ordersys_kit::cli::main::<ordersys_payment::Service>().await
}
