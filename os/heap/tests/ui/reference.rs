use txipc_heap::Persistent;

#[derive(Persistent)]
#[repr(C)]
struct S<'a> {
    bad: &'a u64,
}

fn main() {}
