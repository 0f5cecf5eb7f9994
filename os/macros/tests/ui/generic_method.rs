use txipc_service::service;

#[service]
pub trait Kv {
    fn get<K: serde::Serialize>(&mut self, key: K) -> Vec<u8>;
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) where Self: Sized;
}

fn main() {}
