use txipc_service::service;

#[service]
pub trait Kv {
    fn version() -> u32;
    fn open(key: Vec<u8>) -> u32;
}

fn main() {}
