pub mod export;

pub mod exit {
    use std::process::ExitCode;
    /// An input or output failed; the rest was still processed.
    pub fn failure() -> ExitCode {
        ExitCode::from(1)
    }
    /// The command line itself is wrong (clap uses 2 as well).
    pub fn usage() -> ExitCode {
        ExitCode::from(2)
    }
}
