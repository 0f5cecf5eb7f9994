use txipc_service::service;

#[service]
pub trait Kv {
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        let _ = key;
        None
    }
}

fn main() {}
