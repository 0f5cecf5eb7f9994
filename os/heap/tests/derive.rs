//! `#[derive(Persistent)]` rejects what cannot live in the heap (compile-fail tests), and heap
//! data cannot be written or held past a free without the transaction.

#[test]
fn derive_and_access_rules() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui-pass/*.rs");
}
