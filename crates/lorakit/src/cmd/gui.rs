//! `lorakit gui`: serve the web GUI.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Serve the web GUI on this machine (open the printed address in a browser).
#[derive(Args, Debug)]
pub struct GuiArgs {
    /// A folder the GUI may read and write under (repeatable; default: the current folder).
    /// Nothing outside the roots is reachable from the browser.
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
    /// Address to listen on. Anything but a loopback address lets other machines connect
    /// (they still need the token).
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 7870)]
    port: u16,
    /// The access token (default: a random one per start). Also read from LORAKIT_TOKEN.
    #[arg(long, env = "LORAKIT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A host name the browser may use besides localhost (a reverse proxy, the machine's name).
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// Where the job queue lives: one folder per job with its config snapshot, record and
    /// output (default: ~/.lorakit/gui).
    #[arg(long = "state", value_name = "DIR")]
    state: Option<PathBuf>,
}

/// Runs the server until Ctrl-C.
pub fn run(args: GuiArgs) -> anyhow::Result<ExitCode> {
    let roots = if args.roots.is_empty() { vec![std::env::current_dir()?] } else { args.roots };
    let state_dir = match args.state {
        Some(dir) => dir,
        None => std::env::var_os("HOME")
            .or_else(|| std::env::var_os("USERPROFILE"))
            .map(|home| PathBuf::from(home).join(".lorakit").join("gui"))
            .ok_or_else(|| anyhow::anyhow!("no home folder to keep the job queue in: give --state DIR"))?,
    };
    lorakit_gui::run(lorakit_gui::GuiConfig {
        roots,
        listen: args.listen,
        port: args.port,
        token: args.token,
        allow_hosts: args.allow_hosts,
        state_dir,
    })?;
    Ok(ExitCode::SUCCESS)
}
