//! `ordersys-user`: `serve` (the default) until SIGTERM/Ctrl-C, `migrate`
//! ([`ordersys_kit::cli`]).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ordersys_kit::cli::main::<ordersys_user::Service>().await
}
