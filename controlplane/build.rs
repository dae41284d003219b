//! Compiles the eBPF datapath (nightly, bpfel target, via aya-build) and embeds it in `netbee`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let pkg = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "netbee-ebpf")
        .ok_or_else(|| anyhow!("netbee-ebpf package not found in the workspace"))?;
    let root = pkg.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: pkg.name.as_str(), root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
}
