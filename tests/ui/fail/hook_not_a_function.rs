#[mtnt::hook(before_run)]
struct Seed;

fn main() {}
