#![forbid(unsafe_code)]

fn main() {
    std::process::exit(applianced::cli::main());
}
