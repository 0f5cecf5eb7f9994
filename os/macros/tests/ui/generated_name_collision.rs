use txipc_service::{Bytes, service};

#[service]
pub trait Kv {
    fn get(&mut self, key: Bytes) -> Option<Bytes>;
    fn get_with(&mut self, key: Bytes) -> u32;
    fn serve_get(&mut self) -> u32;
}

fn main() {}
