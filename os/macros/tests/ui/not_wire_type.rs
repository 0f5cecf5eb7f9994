use txipc_service::service;

pub struct NotSerde;

#[derive(serde::Serialize)]
pub struct SerializeOnly(u32);

#[service]
pub trait Kv {
    fn put(&mut self, value: NotSerde);
    fn get(&mut self) -> Result<u32, SerializeOnly>;
}

fn main() {}
