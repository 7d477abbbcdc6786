fn main() {
    eprintln!("error: the sweepfold agent is not built yet (it arrives with the agents issue)");
    std::process::exit(1);
}
