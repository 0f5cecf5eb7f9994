// Declares the `loom` cfg used by the model tests (`RUSTFLAGS="--cfg loom" cargo test -p txipc-chan --test loom_handshake --release`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
