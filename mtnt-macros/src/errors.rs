//! [`Errors`]: several compile errors reported together.

/// Collects several errors into one, so that every problem is reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn into_inner(self) -> Option<syn::Error> {
        self.0
    }
}
