use txipc_service::service;

#[service(companion)]
pub trait Kv {
    fn ping(&mut self);
}

#[service(name = "kv", version = 2)]
pub trait Fs {
    fn ping(&mut self);
}

#[service(name = 3)]
pub trait Log {
    fn ping(&mut self);
}

fn main() {}
