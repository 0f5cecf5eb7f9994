//! Reading a `#[service]` trait into a [`Service`], checking every rule on the way.
//!
//! Every violation becomes a `syn::Error` spanned on the offending tokens; all of them are
//! collected, so one compile shows every problem in the trait.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, LitStr, Pat, PathArguments, ReturnType,
    TraitItem, TraitItemFn, Type,
};

/// A checked service trait.
pub struct Service {
    /// The trait as it will be emitted (`#[readonly]` removed).
    pub item: ItemTrait,
    /// The name in manifests and grants.
    pub name: String,
    pub methods: Vec<Method>,
}

/// A checked method.
pub struct Method {
    /// As written (used for the client method and the dispatch call).
    pub ident: Ident,
    /// Without `r#`: the name on the wire's logs.
    pub name: String,
    /// Starting at 1.
    pub id: u32,
    pub readonly: bool,
    /// `#[capture(..)]`: where the companion may checkpoint after this method.
    pub capture: Capture,
    pub args: Vec<Arg>,
    pub ret: Ret,
    /// The method's `#[doc]` attributes, repeated on the client method.
    pub docs: Vec<Attribute>,
    /// The method's `#[allow]` and `#[deprecated]` attributes, repeated on the client method
    /// (which has the same parameters, so the same lints).
    pub passthrough: Vec<Attribute>,
    pub deprecated: bool,
    /// The method has a `Bytes` argument or a `Bytes` in its result: the trait gets a
    /// `serve_<name>` form (borrowed arguments, lent reply) that the dispatcher calls.
    pub serve: bool,
    /// Its (ok) result holds a `Bytes`: the client gets `<name>_with`, which hands the result,
    /// its byte strings borrowed from the reply, to a closure.
    pub with: bool,
}

impl Method {
    /// The name of the trait's generated serving form.
    pub fn serve_name(&self) -> String {
        format!("serve_{}", self.name)
    }

    /// The name of the client's borrowing form.
    pub fn with_name(&self) -> String {
        format!("{}_with", self.name)
    }
}

/// A method's `#[capture(..)]` annotation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    Allowed,
    Now,
    Defer,
}

pub struct Arg {
    /// The parameter's name if it has one, else `arg{i}`.
    pub ident: Ident,
    pub ty: Type,
}

pub enum Ret {
    /// Nothing, or `()`.
    Unit,
    /// `-> R`
    Plain(Box<Type>),
    /// `-> Result<R, E>`
    Fallible { ok: Box<Type>, err: Box<Type> },
}

/// The arguments of `#[service(...)]`.
fn parse_args(attr: TokenStream, errors: &mut Errors) -> Option<LitStr> {
    let mut name = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            if name.is_some() {
                return Err(meta.error("`name` is given twice"));
            }
            let lit: LitStr = meta.value()?.parse()?;
            if lit.value().is_empty() {
                return Err(syn::Error::new(
                    lit.span(),
                    "the service name must not be empty",
                ));
            }
            name = Some(lit);
            Ok(())
        } else {
            Err(meta.error(
                "unknown `#[service]` argument: the only one is `name = \"...\"` (the service's name in manifests; default: the trait's name)",
            ))
        }
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, attr) {
        errors.push(e);
    }
    name
}

/// Collected errors.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }

    fn spanned(&mut self, tokens: impl quote::ToTokens, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }

    pub fn into_result(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Reads and checks the trait. On error, also returns the trait cleaned of `#[readonly]` (when
/// the item is one) so the caller can emit it beside the errors and spare the user follow-on
/// errors about a missing trait.
pub fn read(attr: TokenStream, item: TokenStream) -> Result<Service, (syn::Error, TokenStream)> {
    let mut errors = Errors::default();
    let name = parse_args(attr, &mut errors);

    let mut item: ItemTrait = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Trait(t)) => t,
        Ok(other) => {
            let e = syn::Error::new(
                item_span(&other),
                "`#[service]` goes on a trait: write the interface as `pub trait Name { fn method(&mut self, arg: T) -> R; }`",
            );
            errors.push(e);
            let e = errors.into_result().unwrap_err();
            return Err((e, item));
        }
        Err(e) => {
            errors.push(e);
            return Err((errors.into_result().unwrap_err(), item));
        }
    };

    check_trait_header(&item, &mut errors);

    let mut methods = Vec::new();
    let mut next_id: u32 = 1;
    for trait_item in &mut item.items {
        match trait_item {
            TraitItem::Fn(f) => {
                if let Some(m) = read_method(f, next_id, &mut errors) {
                    methods.push(m);
                }
                next_id += 1;
            }
            TraitItem::Const(c) => errors.spanned(
                &c.ident,
                "a service trait cannot have associated consts: the client has no server type to read them from; use a `const` next to the trait instead",
            ),
            TraitItem::Type(t) => errors.spanned(
                &t.ident,
                "a service trait cannot have associated types: both ends must agree on concrete wire types; name the type in the method signatures instead",
            ),
            TraitItem::Macro(m) => errors.spanned(
                &m.mac,
                "a service trait cannot contain macro invocations: `#[service]` must see every method to number it",
            ),
            other => errors.spanned(other, "`#[service]` does not understand this item; a service trait holds methods only"),
        }
    }
    if item.items.is_empty() {
        errors.at(item.ident.span(), "a service needs at least one method");
    }
    check_collisions(&item.ident, &methods, &mut errors);

    match errors.into_result() {
        Ok(()) => Ok(Service {
            name: name.map_or_else(|| item.ident.unraw().to_string(), |n| n.value()),
            item,
            methods,
        }),
        Err(e) => Err((e, quote::ToTokens::into_token_stream(item))),
    }
}

fn item_span(item: &syn::Item) -> Span {
    use syn::Item::*;
    match item {
        Struct(s) => s.struct_token.span,
        Enum(e) => e.enum_token.span,
        Fn(f) => f.sig.fn_token.span,
        Impl(i) => i.impl_token.span,
        Mod(m) => m.mod_token.span,
        Union(u) => u.union_token.span,
        Type(t) => t.type_token.span,
        TraitAlias(t) => t.trait_token.span,
        other => other.span(),
    }
}

fn check_trait_header(item: &ItemTrait, errors: &mut Errors) {
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics,
            "a service trait cannot be generic: the wire types must be fixed by the interface; define one service per concrete type",
        );
    }
    if let Some(w) = &item.generics.where_clause {
        errors.spanned(
            w,
            "a service trait cannot have a `where` clause: it has no generics to constrain",
        );
    }
    if let Some(u) = &item.unsafety {
        errors.spanned(u, "a service trait cannot be `unsafe`: there is nothing a server could promise through it that a client could rely on across a process boundary");
    }
    if let Some(a) = &item.auto_token {
        errors.spanned(a, "a service trait cannot be an `auto` trait");
    }
}

/// Reads one method, removing `#[readonly]` from it. Returns `None` when it has errors (already
/// recorded).
fn read_method(f: &mut TraitItemFn, id: u32, errors: &mut Errors) -> Option<Method> {
    let mut local = Errors::default();
    let readonly = take_readonly(&mut f.attrs, &mut local);
    let capture = take_capture(&mut f.attrs, readonly, &mut local);

    for attr in &f.attrs {
        if attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr") {
            local.spanned(
                attr,
                "`#[cfg]` cannot be used on a service method: method numbers follow declaration order, so a configured-out method would renumber every method after it; keep the method and have servers return an error when the feature is off",
            );
        }
    }

    let sig = &f.sig;
    if let Some(t) = &sig.constness {
        local.spanned(t, "a service method cannot be `const fn`");
    }
    if let Some(t) = &sig.asyncness {
        local.spanned(
            t,
            "a service method cannot be `async`: a server runs one request at a time inside a transaction, and a handler that yields would keep the transaction open; write a plain `fn`",
        );
    }
    if let Some(t) = &sig.unsafety {
        local.spanned(t, "a service method cannot be `unsafe`: a remote client cannot uphold a safety contract; make the method safe and check its arguments");
    }
    if let Some(abi) = &sig.abi {
        local.spanned(
            abi,
            "a service method cannot have an `extern` ABI; remove it",
        );
    }
    if !sig.generics.params.is_empty() {
        local.spanned(
            &sig.generics,
            "a service method cannot be generic: the server must know the exact type to decode; use a concrete type (an enum if several are allowed)",
        );
    }
    if let Some(w) = &sig.generics.where_clause {
        local.spanned(
            w,
            "a service method cannot have a `where` clause: it has no generics to constrain",
        );
    }
    if let Some(v) = &sig.variadic {
        local.spanned(v, "a service method cannot be variadic; take a `Vec<T>`");
    }
    if let Some(body) = &f.default {
        local.spanned(
            body,
            "a service method cannot have a default body: the interface crate is what clients depend on, so server behaviour does not belong there; move the body into the server's `impl` and end this declaration with `;`",
        );
    }

    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) => check_receiver(r, &mut local),
        _ => local.spanned(
            &sig.ident,
            "a service method must take `&mut self` first: it is called on the server that handles the request; add `&mut self` as its first parameter",
        ),
    }

    let mut args = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate().skip(1) {
        let FnArg::Typed(pt) = input else {
            // A second receiver: the compiler reports it.
            continue;
        };
        if let Some(attr) = pt.attrs.first() {
            local.spanned(
                attr,
                "attributes on service method parameters are not supported",
            );
        }
        check_wire_type(&pt.ty, Position::Argument, &mut local);
        let ident = match &*pt.pat {
            Pat::Ident(p) if p.subpat.is_none() && p.by_ref.is_none() => p.ident.clone(),
            _ => Ident::new(&format!("arg{}", i - 1), pt.pat.span()),
        };
        args.push(Arg {
            ident,
            ty: (*pt.ty).clone(),
        });
    }

    let ret = match &sig.output {
        ReturnType::Default => Ret::Unit,
        ReturnType::Type(_, ty) => {
            match &**ty {
                Type::Tuple(t) if t.elems.is_empty() => Ret::Unit,
                Type::Never(n) => {
                    local.spanned(n, "a service method must return to answer its client; `-> !` cannot be a reply");
                    Ret::Unit
                }
                ty => match result_parts(ty) {
                    Some((ok, err)) => {
                        check_wire_type(ok, Position::Return, &mut local);
                        check_wire_type(err, Position::Return, &mut local);
                        Ret::Fallible {
                            ok: Box::new(ok.clone()),
                            err: Box::new(err.clone()),
                        }
                    }
                    None => {
                        check_wire_type(ty, Position::Return, &mut local);
                        Ret::Plain(Box::new(ty.clone()))
                    }
                },
            }
        }
    };

    let docs = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    let passthrough = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("allow") || a.path().is_ident("deprecated"))
        .cloned()
        .collect();
    let deprecated = f.attrs.iter().any(|a| a.path().is_ident("deprecated"));

    let ok = local.0.is_none();
    if let Some(e) = local.0 {
        errors.push(e);
    }
    let with = match &ret {
        Ret::Unit => false,
        Ret::Plain(ty) => contains_bytes(ty),
        Ret::Fallible { ok, .. } => contains_bytes(ok),
    };
    let serve = with
        || args.iter().any(|a| is_bytes(&a.ty))
        || matches!(&ret, Ret::Fallible { err, .. } if contains_bytes(err));
    ok.then(|| Method {
        serve,
        with,
        name: sig.ident.unraw().to_string(),
        ident: sig.ident.clone(),
        id,
        readonly,
        capture,
        args,
        ret,
        docs,
        passthrough,
        deprecated,
    })
}

/// Removes `#[readonly]` from `attrs`; true if it was there.
fn take_readonly(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> bool {
    let mut found = false;
    attrs.retain(|attr| {
        if !attr.path().is_ident("readonly") {
            return true;
        }
        match &attr.meta {
            syn::Meta::Path(_) => {}
            syn::Meta::List(l) => errors.spanned(
                l,
                "`#[readonly]` takes no arguments: write `#[readonly]` on a method that changes no server state",
            ),
            syn::Meta::NameValue(nv) => errors.spanned(
                nv,
                "`#[readonly]` takes no value: write `#[readonly]` on a method that changes no server state",
            ),
        }
        if found {
            errors.spanned(attr, "`#[readonly]` is given twice");
        }
        found = true;
        false
    });
    found
}

/// Removes `#[capture(now)]` / `#[capture(defer)]` from `attrs` and returns it.
fn take_capture(attrs: &mut Vec<Attribute>, readonly: bool, errors: &mut Errors) -> Capture {
    const WHAT: &str = "write `#[capture(now)]` (take a checkpoint right after this method) or `#[capture(defer)]` (never right after it: the state is mid-protocol until another method runs)";
    let mut found: Option<Capture> = None;
    attrs.retain(|attr| {
        if !attr.path().is_ident("capture") {
            return true;
        }
        let parsed = match &attr.meta {
            syn::Meta::List(l) => match syn::parse2::<Ident>(l.tokens.clone()) {
                Ok(id) if id == "now" => Some(Capture::Now),
                Ok(id) if id == "defer" => Some(Capture::Defer),
                _ => {
                    errors.spanned(
                        &l.tokens,
                        format_args!("unknown capture point `{}`: {WHAT}", l.tokens),
                    );
                    None
                }
            },
            other => {
                errors.spanned(other, format_args!("`#[capture]` needs its point: {WHAT}"));
                None
            }
        };
        if found.is_some() {
            errors.spanned(attr, "`#[capture]` is given twice: keep one");
        } else if readonly && parsed.is_some() {
            errors.spanned(
                attr,
                "`#[capture]` on a `#[readonly]` method: a readonly method changes no state and is never logged, so there is no state to capture after it; remove one of the two",
            );
        }
        if found.is_none() {
            found = parsed;
        }
        false
    });
    found.unwrap_or(Capture::Allowed)
}

fn check_receiver(r: &syn::Receiver, errors: &mut Errors) {
    // `&mut self`, or the long form `self: &mut Self`.
    let (is_ref, is_mut, lifetime) = match (&r.reference, r.colon_token) {
        (Some((_, lt)), None) => (true, r.mutability.is_some(), lt.clone()),
        (None, None) => (false, false, None),
        (_, Some(_)) => match &*r.ty {
            Type::Reference(tr) if is_self(&tr.elem) => {
                (true, tr.mutability.is_some(), tr.lifetime.clone())
            }
            _ => (false, false, None),
        },
    };
    if !is_ref {
        errors.spanned(
            r,
            "a service method takes `&mut self`, not `self` by value: the server outlives every request and handles them one at a time, each with its state to itself; write `&mut self`",
        );
    } else if !is_mut {
        errors.spanned(
            r,
            "a service method takes `&mut self`, not `&self`: a server handles one request at a time, each with its state to itself; write `&mut self`, and mark the method `#[readonly]` if it changes no state",
        );
    } else if let Some(lt) = lifetime {
        errors.spanned(
            lt,
            "the receiver of a service method takes no lifetime: write `&mut self`",
        );
    }
}

fn is_self(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

/// `Result<R, E>` (any path ending in `Result` with exactly two type arguments).
fn result_parts(ty: &Type) -> Option<(&Type, &Type)> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    match (types.next(), types.next(), types.next(), args.args.len()) {
        (Some(ok), Some(err), None, 2) => Some((ok, err)),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Position {
    Argument,
    Return,
}

/// Rejects what cannot be a wire type whatever traits it has: borrows, `impl Trait`, `Self`.
/// Whether the type is `Serialize + DeserializeOwned` is left to the compiler (see `expand`).
fn check_wire_type(ty: &Type, pos: Position, errors: &mut Errors) {
    struct Checker<'e> {
        pos: Position,
        errors: &'e mut Errors,
    }
    impl<'ast> Visit<'ast> for Checker<'_> {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            let what = match self.pos {
                Position::Argument => {
                    "a service method cannot take a reference: the arguments are copied across a channel and the server decodes its own copy; take the owned type (`Vec<u8>` for `&[u8]`, `String` for `&str`, `T` for `&T`)"
                }
                Position::Return => {
                    "a service method cannot return a reference: the reply is copied across a channel; return the owned type (`Vec<u8>` for `&[u8]`, `String` for `&str`, `T` for `&T`)"
                }
            };
            self.errors.spanned(r, what);
        }
        fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
            let what = match self.pos {
                Position::Argument => {
                    "a service method cannot take `impl Trait`: the server decodes the argument and must know its concrete type; name the type"
                }
                Position::Return => {
                    "a service method cannot return `impl Trait`: the client decodes the reply and must know its concrete type; name the type"
                }
            };
            self.errors.spanned(t, what);
        }
        fn visit_lifetime(&mut self, lt: &'ast syn::Lifetime) {
            if lt.ident != "static" {
                self.errors.spanned(
                    lt,
                    "a service type cannot borrow: wire types are decoded into owned values; use an owned type (or `'static`)",
                );
            }
        }
        fn visit_type_path(&mut self, p: &'ast syn::TypePath) {
            let first_is_self =
                p.qself.is_none() && p.path.segments.first().is_some_and(|s| s.ident == "Self");
            if first_is_self {
                self.errors.spanned(
                    p,
                    "`Self` is the server's type and cannot cross a channel: the client has no server; name a concrete wire type",
                );
            } else {
                syn::visit::visit_type_path(self, p);
            }
        }
    }
    Checker { pos, errors }.visit_type(ty);
}

/// Generated names must not collide: method variants among themselves, client methods with the
/// client's own methods.
fn check_collisions(trait_ident: &Ident, methods: &[Method], errors: &mut Errors) {
    let mut seen: Vec<(String, &Method)> = Vec::new();
    for m in methods {
        if ["new", "transport", "into_transport"].contains(&m.name.as_str()) {
            errors.spanned(
                &m.ident,
                format_args!(
                    "a service method cannot be named `{}`: the generated `{}Client::{}` already has that name; rename the method",
                    m.name,
                    trait_ident.unraw(),
                    m.name
                ),
            );
        }
        for (generated, what) in [
            (m.serve.then(|| m.serve_name()), "the trait's serving form"),
            (m.with.then(|| m.with_name()), "the client's borrowing form"),
        ] {
            let Some(generated) = generated else { continue };
            if let Some(other) = methods.iter().find(|o| o.name == generated) {
                errors.spanned(
                    &other.ident,
                    format_args!(
                        "a service method cannot be named `{generated}`: `#[service]` generates `{generated}` as {what} of `{}`; rename one of them",
                        m.name
                    ),
                );
            }
        }
        let variant = variant_name(&m.name);
        if let Some((_, other)) = seen.iter().find(|(v, _)| *v == variant) {
            errors.spanned(
                &m.ident,
                format_args!(
                    "methods `{}` and `{}` both map to the method variant `{}`; rename one",
                    other.name, m.name, variant
                ),
            );
        } else {
            seen.push((variant, m));
        }
    }
}

/// True for a type written as a path ending in `Bytes` without arguments (`Bytes`,
/// `txipc_service::Bytes`): the client stub takes it as `impl AsRef<[u8]>` and encodes it as a
/// serde byte string (one length, then the bytes), which is `Bytes`' encoding; a type of that
/// name from elsewhere must be a byte string encoded the same way and convert `From<&[u8]>`.
pub fn is_bytes(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Bytes" && s.arguments.is_none()),
        Type::Group(g) => is_bytes(&g.elem),
        Type::Paren(p) => is_bytes(&p.elem),
        _ => false,
    }
}

/// Whether a `Bytes` appears anywhere in `ty` as written (`Option<Bytes>`, `(u32, Bytes)`,
/// `Vec<Bytes>`; not behind a type alias, which the macro cannot see through).
pub fn contains_bytes(ty: &Type) -> bool {
    struct Find(bool);
    impl<'ast> Visit<'ast> for Find {
        fn visit_type(&mut self, ty: &'ast Type) {
            if is_bytes(ty) {
                self.0 = true;
            } else {
                syn::visit::visit_type(self, ty);
            }
        }
    }
    let mut f = Find(false);
    f.visit_type(ty);
    f.0
}

/// `ty` with every `Bytes` in it replaced by `with` (the borrowed form of a result: the same
/// encoding, since serde is structural and `with` encodes as a byte string too).
pub fn replace_bytes(ty: &Type, with: &Type) -> Type {
    struct Replace<'a>(&'a Type);
    impl syn::visit_mut::VisitMut for Replace<'_> {
        fn visit_type_mut(&mut self, ty: &mut Type) {
            if is_bytes(ty) {
                *ty = self.0.clone();
            } else {
                syn::visit_mut::visit_type_mut(self, ty);
            }
        }
    }
    let mut ty = ty.clone();
    syn::visit_mut::VisitMut::visit_type_mut(&mut Replace(with), &mut ty);
    ty
}

/// `scan_range` → `ScanRange`.
pub fn variant_name(method: &str) -> String {
    let mut out = String::new();
    for part in method.split('_').filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(c) = chars.next() {
            out.extend(c.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    if out == "Self" {
        out.push('_');
    }
    out
}

/// `KvStore` → `KV_STORE`, `HTTPServer` → `HTTP_SERVER`.
pub fn screaming_snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && c.is_uppercase() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(c.to_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(variant_name("get"), "Get");
        assert_eq!(variant_name("scan_range"), "ScanRange");
        assert_eq!(variant_name("_private"), "Private");
        assert_eq!(variant_name("get_v2"), "GetV2");
        assert_eq!(variant_name("self_"), "Self_");
        assert_eq!(screaming_snake("Kv"), "KV");
        assert_eq!(screaming_snake("KvStore"), "KV_STORE");
        assert_eq!(screaming_snake("HTTPServer"), "HTTP_SERVER");
        assert_eq!(screaming_snake("Fs2Api"), "FS2_API");
    }
}
