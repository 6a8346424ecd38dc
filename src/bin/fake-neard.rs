//! `fake-neard`: the neard stand-in used by tests and the demo; see
//! `failoverd::fake_neard` for what it does.

fn main() {
    std::process::exit(failoverd::fake_neard::run_with_args(std::env::args().collect()));
}
