//! `dpo-wgpu-fuzz TARGET`: feeds AFL++'s inputs to one of `dpo_wgpu::fuzz::TARGETS`.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(&(_, target)) = dpo_wgpu::fuzz::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = dpo_wgpu::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: dpo-wgpu-fuzz TARGET (one of {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
