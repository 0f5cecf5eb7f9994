use txipc_service::service;

#[service]
pub struct Kv {
    map: Vec<u8>,
}

fn main() {}
