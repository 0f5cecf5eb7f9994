use txipc_service::service;

#[service]
pub trait Kv {
    #[readonly(true)]
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>>;
    #[readonly = "yes"]
    fn len(&mut self) -> u64;
    #[readonly]
    #[readonly]
    fn ping(&mut self);
}

fn main() {}
