use txipc_heap::Persistent;

#[derive(Persistent)]
#[repr(C)]
struct S {
    bad: *mut u8,
}

fn main() {}
