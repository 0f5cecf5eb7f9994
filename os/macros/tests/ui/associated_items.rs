use txipc_service::service;

#[service]
pub trait Kv {
    type Key;
    const MAX: usize;
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>>;
}

fn main() {}
