use txipc_service::service;

#[service]
pub trait Kv {
    fn get(&self, key: Vec<u8>) -> Option<Vec<u8>>;
}

fn main() {}
