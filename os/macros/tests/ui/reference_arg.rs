use txipc_service::service;

#[service]
pub trait Kv {
    fn put(&mut self, key: &[u8], value: Option<&str>);
    fn get(&mut self, key: Vec<u8>) -> &[u8];
    fn scan(&mut self, start: std::borrow::Cow<'_, str>) -> Vec<Vec<u8>>;
}

fn main() {}
