use txipc_heap::Persistent;

#[derive(Persistent)]
#[repr(C)]
struct S {
    ok: u64,
    bad: std::rc::Rc<u8>,
}

fn main() {}
