use txipc_service::service;

#[service]
pub trait Kv {
    fn close(self);
    fn boxed(self: Box<Self>) -> u32;
}

fn main() {}
