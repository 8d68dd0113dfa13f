//! Thin entry point; everything lives in the library. A failed command's error is printed
//! here, once, and the process exits with its code.
fn main() {
    let code = match vm_agent::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", e.report());
            e.exit_code()
        }
    };
    std::process::exit(code);
}
