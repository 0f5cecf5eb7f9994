use txipc_service::service;

#[service]
pub trait Kv {
    fn put(&mut self, key: impl AsRef<[u8]>);
    fn keys(&mut self) -> impl Iterator<Item = Vec<u8>>;
}

fn main() {}
