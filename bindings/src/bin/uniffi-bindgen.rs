//! The uniffi binding generator, pinned to this workspace's uniffi version.
//!
//! `cargo run -p newt-ffi --bin uniffi-bindgen -- generate --library target/debug/libnewt_ffi.so --language kotlin --out-dir OUT`
fn main() {
    uniffi::uniffi_bindgen_main()
}
