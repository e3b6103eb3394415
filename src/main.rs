use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = clerk::cli::Cli::parse();
    clerk::cli::prepare(&cli);
    clerk::cli::init_logging();
    match clerk::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
