use txipc_heap::Persistent;

#[derive(Persistent)]
struct S {
    a: u64,
}

fn main() {}
