//! The `parkpay-gateway` binary: a thin clap front over the library.

use clap::{Parser, Subcommand};
use parkpay_gateway::reader::cli::{bench_plates, read_plate, BenchPlatesArgs, ReadPlateArgs};

#[derive(Debug, Parser)]
#[command(name = "parkpay-gateway", about = "parkpay edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read the plate in each image file.
    ReadPlate(ReadPlateArgs),
    /// Measure the plate reader on simulated scenes.
    BenchPlates(BenchPlatesArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::ReadPlate(args) => read_plate(&args),
        Command::BenchPlates(args) => bench_plates(&args),
    }
}
