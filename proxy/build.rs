//! Link options of the `meshtrace-proxy` binary.

fn main() {
    // Relative relocations packed (DT_RELR, glibc ≥ 2.36, binutils ≥ 2.38): the dynamic loader
    // reads a few KiB instead of ~400 KiB of `.rela.dyn` at start-up, and those pages no longer
    // count in the proxy's resident memory (benches/README.md, "Idle memory"). The binary stays
    // position independent.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bin=meshtrace-proxy=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
