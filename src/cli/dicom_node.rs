//! `medpatch dicom-node`: the DICOM node (the `medpatch-dicom-node` crate) from the command line.

use super::{EngineArgs, exit};
use anyhow::Result;
use clap::Args;
use medpatch_dicom_node::{Destination, MapClasses, NodeConfig, Timeouts};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct DicomNodeArgs {
    /// This node's AE title: senders must call it (storescu -aec MEDPATCH).
    #[arg(long, default_value = "MEDPATCH", value_parser = ae_title)]
    ae_title: String,
    /// TCP port to receive images on.
    #[arg(long, default_value_t = 11112)]
    port: u16,
    /// Address to listen on: loopback by default; 0.0.0.0 for every interface (DIMSE here is
    /// not encrypted: keep it on a trusted network).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Where the results go (the PACS), as AE@host:port.
    #[arg(long, value_name = "AE@HOST:PORT")]
    destination: Destination,
    /// The on-disk queue: results wait here until the destination has stored them.
    #[arg(long, value_name = "DIR", default_value = "medpatch-dicom-queue")]
    queue: PathBuf,
    /// Classes that get a segment and an overlay: comma-separated names, or `all`. Default:
    /// those called present (model thresholds, else 0.5), or the most probable if none is.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Longest wait between retries while the destination is down, in seconds (the wait
    /// starts at 1 s and doubles).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    retry_max: f64,
    /// Patch logit at which the overlays' colours saturate (default: the model's own range).
    #[arg(long, value_name = "LOGIT", value_parser = super::predict::overlay_range)]
    overlay_range: Option<f32>,
    /// C-ECHO the destination, print the outcome and exit (0: it answered with success).
    #[arg(long)]
    echo: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

fn ae_title(text: &str) -> Result<String, String> {
    let ok = !text.is_empty() && text.len() <= 16 && text.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if ok { Ok(text.to_string()) } else { Err("an AE title is 1 to 16 printable ASCII characters".into()) }
}

pub fn run(args: DicomNodeArgs) -> Result<ExitCode> {
    let timeouts = Timeouts { connect: Duration::from_secs(5), io: Duration::from_secs(60) };
    if args.echo {
        return Ok(match medpatch_dicom_node::echo(&args.ae_title, &args.destination, timeouts) {
            Ok(0) => {
                println!("C-ECHO {}: success", args.destination);
                ExitCode::SUCCESS
            }
            Ok(status) => {
                println!("C-ECHO {}: status {status:04X}H", args.destination);
                exit::failure()
            }
            Err(e) => {
                eprintln!("medpatch: error: C-ECHO {}: {e}", args.destination);
                exit::failure()
            }
        });
    }
    if !(args.retry_max.is_finite() && args.retry_max >= 0.1) {
        eprintln!("medpatch: error: --retry-max must be at least 0.1 seconds");
        return Ok(exit::usage());
    }
    let engine = args.engine.build()?;
    super::predict::report_engine(&engine);
    let classes = &engine.model().metadata.classes;
    let map = match super::chosen_classes(args.classes.as_deref(), classes) {
        Ok(None) => MapClasses::Default,
        Ok(Some(list)) => MapClasses::Only(list),
        Err(problem) => {
            eprintln!("medpatch: error: {problem}");
            return Ok(exit::usage());
        }
    };
    let retry_max = Duration::from_secs_f64(args.retry_max);
    let config = NodeConfig {
        ae_title: args.ae_title,
        listen: SocketAddr::new(args.bind, args.port),
        destination: args.destination,
        queue: args.queue,
        map,
        overlay_logit_range: args.overlay_range,
        timeouts,
        retry_first: Duration::from_secs(1).min(retry_max),
        retry_max,
        max_associations: 16,
    };
    medpatch_dicom_node::run(engine, config)?;
    Ok(ExitCode::SUCCESS)
}
