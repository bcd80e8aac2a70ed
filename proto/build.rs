//! Compile `ordersys/*.proto` with protox (a pure-Rust protobuf compiler): building needs
//! no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "ordersys/money.proto",
        "ordersys/user.proto",
        "ordersys/order.proto",
        "ordersys/payment.proto",
        "ordersys/saga.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
