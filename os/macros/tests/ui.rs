//! Misuse of `#[service]` is a compile error spanned on the offending item, saying what to do
//! instead. Each file in `tests/ui` is one kind of misuse; its `.stderr` is the expected output
//! (regenerate with `TRYBUILD=overwrite cargo test -p txipc-macros --test ui`, then review).

#[test]
fn compile_fail() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
