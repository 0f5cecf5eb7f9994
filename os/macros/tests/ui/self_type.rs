use txipc_service::service;

#[service]
pub trait Kv {
    fn fork(&mut self) -> Self;
    fn merge(&mut self, other: Vec<Self>);
}

fn main() {}
