use txipc_service::service;

#[service]
pub trait Journal {
    #[capture(sometimes)]
    fn append(&mut self, entry: Vec<u8>) -> u64;
    #[capture]
    fn truncate(&mut self);
    #[readonly]
    #[capture(now)]
    fn len(&mut self) -> u64;
    #[capture(now)]
    #[capture(defer)]
    fn begin(&mut self);
}

fn main() {}
