//! `kiln-seed`: builds a multi-platform base image from root filesystem folders and pushes it.
//!
//! Example: `kiln-seed --registry 127.0.0.1:5000 --repository base/busybox --tag latest
//! --platform linux/amd64=rootfs-amd64 --platform linux/arm/v7=rootfs-armhf`; prints the index digest.

use anyhow::Context as _;
use clap::Parser;
use kiln_registry::seed::{seed_image, MediaTypes, SeedPlatform};
use kiln_registry::Registry;

#[derive(Debug, Parser)]
#[command(
    about = "Build a multi-platform image index from root filesystems and push it to a registry"
)]
struct Args {
    /// Registry host, e.g. 127.0.0.1:5000 (plain HTTP on loopback, HTTPS otherwise).
    #[arg(long)]
    registry: String,
    /// Repository to push to, e.g. base/busybox.
    #[arg(long)]
    repository: String,
    /// Tag that will point to the index.
    #[arg(long, default_value = "latest")]
    tag: String,
    /// OS/ARCH[/VARIANT]=DIR, once per platform; DIR is a root filesystem folder.
    #[arg(long = "platform", required = true)]
    platforms: Vec<SeedPlatform>,
    /// Use Docker schema 2 media types (manifest list) instead of OCI ones.
    #[arg(long)]
    docker_media_types: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let registry = Registry::new(&args.registry)?;
    let media_types = if args.docker_media_types {
        MediaTypes::Docker
    } else {
        MediaTypes::Oci
    };
    let seeded = seed_image(
        &registry,
        &args.repository,
        &args.tag,
        &args.platforms,
        media_types,
    )
    .await
    .with_context(|| format!("seeding {}/{}:{}", args.registry, args.repository, args.tag))?;
    for (platform, digest) in &seeded.manifests {
        eprintln!("{platform}: {digest}");
    }
    println!("{}", seeded.index_digest);
    Ok(())
}
