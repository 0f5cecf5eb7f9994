use txipc_heap::Persistent;

#[derive(Persistent)]
#[repr(C)]
struct S {
    ok: u64,
    bad: Vec<u8>,
}

fn main() {}
