use txipc_heap::Persistent;

#[derive(Persistent)]
#[repr(C)]
enum E {
    A,
    B,
}

fn main() {}
