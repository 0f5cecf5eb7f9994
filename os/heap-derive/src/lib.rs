//! `#[derive(Persistent)]`: proves at compile time that a type may live in the recoverable heap.
//!
//! # What it checks
//!
//! * the type is a struct with `#[repr(C)]` (or `#[repr(transparent)]`), so its layout is the
//!   same in every incarnation;
//! * no field is a reference, a raw pointer, a function pointer or a trait object, and no field
//!   names `Box`, `String`, `Vec`, `Rc`, `Arc` (pointers outside the heap) — these are rejected
//!   with a message naming the field;
//! * every field type implements `Persistent` (checked by the compiler through generated
//!   bounds), which catches everything else, including aliases of the types above.
//!
//! The generated impl is `unsafe impl Persistent`; generic parameters get a `Persistent` bound.
#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Type, parse_macro_input};

/// Derives `txipc_heap::Persistent`. See the crate docs for what is checked.
#[proc_macro_derive(Persistent)]
pub fn derive_persistent(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn has_stable_repr(input: &DeriveInput) -> bool {
    let mut ok = false;
    for attr in &input.attrs {
        if attr.path().is_ident("repr") {
            let _ = attr.parse_nested_meta(|m| {
                if m.path.is_ident("C") || m.path.is_ident("transparent") {
                    ok = true;
                }
                Ok(())
            });
        }
    }
    ok
}

const FORBIDDEN: &[&str] = &["Box", "String", "Vec", "Rc", "Arc", "Cell", "RefCell"];

/// Rejects types that obviously point outside the heap, with a precise message.
fn reject(ty: &Type) -> syn::Result<()> {
    match ty {
        Type::Reference(_) => Err(syn::Error::new(
            ty.span(),
            "Persistent: references cannot live in the heap (they point outside it and die with the incarnation)",
        )),
        Type::Ptr(_) => Err(syn::Error::new(
            ty.span(),
            "Persistent: raw pointers cannot live in the heap; use a persistent collection",
        )),
        Type::BareFn(_) => Err(syn::Error::new(
            ty.span(),
            "Persistent: function pointers cannot live in the heap",
        )),
        Type::TraitObject(_) | Type::ImplTrait(_) => Err(syn::Error::new(
            ty.span(),
            "Persistent: trait objects cannot live in the heap",
        )),
        Type::Array(a) => reject(&a.elem),
        Type::Tuple(t) => {
            if t.elems.is_empty() {
                Ok(())
            } else {
                Err(syn::Error::new(
                    ty.span(),
                    "Persistent: tuples have no fixed layout; use a #[repr(C)] struct",
                ))
            }
        }
        Type::Paren(p) => reject(&p.elem),
        Type::Group(g) => reject(&g.elem),
        Type::Path(p) => {
            for seg in &p.path.segments {
                let name = seg.ident.to_string();
                if FORBIDDEN.contains(&name.as_str()) {
                    return Err(syn::Error::new(
                        seg.ident.span(),
                        format!(
                            "Persistent: `{name}` owns or points to memory outside the heap; use PBytes / PVec / PCell from txipc_heap"
                        ),
                    ));
                }
                if let syn::PathArguments::AngleBracketed(a) = &seg.arguments {
                    for arg in &a.args {
                        if let syn::GenericArgument::Type(t) = arg {
                            reject(t)?;
                        }
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => f.named.iter().collect::<Vec<_>>(),
            Fields::Unnamed(f) => f.unnamed.iter().collect::<Vec<_>>(),
            Fields::Unit => Vec::new(),
        },
        Data::Enum(_) => {
            return Err(syn::Error::new(
                input.span(),
                "Persistent can only be derived for structs (enums have invalid bit patterns after a rollback of part of them); use integer fields",
            ));
        }
        Data::Union(_) => {
            return Err(syn::Error::new(
                input.span(),
                "Persistent can only be derived for structs",
            ));
        }
    };
    if !has_stable_repr(input) {
        return Err(syn::Error::new(
            name.span(),
            "Persistent requires #[repr(C)] (or #[repr(transparent)]): the layout must be the same in every incarnation",
        ));
    }
    for f in &fields {
        reject(&f.ty)?;
    }
    let mut generics = input.generics.clone();
    for p in generics.type_params_mut() {
        p.bounds.push(syn::parse_quote!(::txipc_heap::Persistent));
    }
    let (impl_g, ty_g, where_c) = generics.split_for_impl();
    let mut preds: Vec<TokenStream2> = where_c
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    for f in &fields {
        let ty = &f.ty;
        preds.push(quote!(#ty: ::txipc_heap::Persistent));
    }
    Ok(quote! {
        // SAFETY: generated by #[derive(Persistent)]: the struct is repr(C)/transparent and every
        // field is Persistent (enforced by the where clause), which is what the trait requires.
        unsafe impl #impl_g ::txipc_heap::Persistent for #name #ty_g where #(#preds,)* {}
    })
}
