use txipc_heap::Persistent;

struct Plain(u64);

#[derive(Persistent)]
#[repr(C)]
struct S {
    a: Plain,
    b: std::collections::HashMap<u64, u64>,
}

fn main() {}
