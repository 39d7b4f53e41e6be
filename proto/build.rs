//! Generates the wire types from `wxgate/v1/*.proto` with the vendored `protoc`,
//! so the build needs no protobuf compiler installed on the machine. Set `PROTOC` to use
//! another one.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    let mut protos = std::fs::read_dir("wxgate/v1")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect::<Vec<_>>();
    protos.sort();
    println!("cargo:rerun-if-changed=wxgate/v1");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let includes = [std::path::PathBuf::from(".")];
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("wxgate_v1.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
