// A server without a distillation of its state cannot run under policy `companion`.
use txipc_service::service;

#[service]
pub trait Counter {
    fn add(&mut self, n: u64) -> u64;
}

struct Plain(u64);

impl Counter for Plain {
    fn add(&mut self, n: u64) -> u64 {
        self.0 += n;
        self.0
    }
}

fn main() {
    let _ = CounterCompanion::new(Plain(0));
}
