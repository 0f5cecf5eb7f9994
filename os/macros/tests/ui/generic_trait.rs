use txipc_service::service;

#[service]
pub trait Kv<K> {
    fn get(&mut self, key: K) -> Vec<u8>;
}

fn main() {}
