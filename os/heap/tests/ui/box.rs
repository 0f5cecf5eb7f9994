use txipc_heap::Persistent;

#[derive(Persistent)]
#[repr(C)]
struct S {
    ok: u64,
    bad: Box<u64>,
}

fn main() {}
