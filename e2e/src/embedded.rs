//! The one-process `ordersys` binary as the tests start it.

use std::collections::HashMap;

use crate::process::Service;

/// The environment of the embedded `ordersys` binary with data in `data_dir`, REST on
/// 127.0.0.1:`port`, its admin port free ([`embedded_ready_url`]), internal ports
/// ephemeral, a generous rate limit and no servers at all, whatever this process's
/// environment says.
pub fn embedded_env(data_dir: &std::path::Path, port: u16) -> HashMap<String, String> {
    [
        ("DATA_DIR", data_dir.display().to_string()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("ADMIN_ADDR", format!("127.0.0.1:{}", crate::free_port())),
        ("INTERNAL_PORTS", "ephemeral".into()),
        ("RATE_LIMIT_PER_MINUTE", "100000".into()),
        ("DATABASE_URL", String::new()),
        ("KAFKA_BROKERS", String::new()),
        ("REDIS_URL", String::new()),
        ("JWT_SECRET", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `/readyz` of an `ordersys` process started with [`embedded_env`] (its admin port).
pub fn embedded_ready_url(ordersys: &Service) -> String {
    let admin = ordersys
        .env_var("ADMIN_ADDR")
        .expect("started with embedded_env: ADMIN_ADDR");
    format!("http://{admin}/readyz")
}
