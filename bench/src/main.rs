//! `bench`: tickfan's load harness (DESIGN §5). Not built yet: it is issue #3. Until then this
//! binary says so instead of pretending to measure anything.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("bench: the load harness is not built yet (issue #3: bench run / bench compare)");
    ExitCode::from(2)
}
