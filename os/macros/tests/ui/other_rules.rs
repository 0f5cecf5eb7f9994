use txipc_service::service;

#[service]
pub trait Kv {
    unsafe fn raw(&mut self, addr: u64);
    extern "C" fn ffi(&mut self);
    #[cfg(unix)]
    fn dump(&mut self) -> Vec<u8>;
    fn new(&mut self) -> u32;
    fn get_key(&mut self);
    fn get__key(&mut self);
    fn halt(&mut self) -> !;
}

#[service]
pub trait Empty {}

fn main() {}
