//! The environment switches that pick kernels and paths (`DINOV2_GEMM`, `DINOV2_ATTENTION`, ...:
//! the README lists them), read when a device or a backend opens. A value a switch does not take
//! is an error naming the variable and the values it takes: a misspelt switch must not silently
//! run, and get measured as, the default.

use std::env::VarError;

use crate::error::{KernelError, Result};

/// The value of the switch `name` among `allowed`; `None` when it is unset or empty.
pub fn switch(name: &'static str, allowed: &[&'static str]) -> Result<Option<&'static str>> {
    match std::env::var(name) {
        Ok(value) => parse_switch(name, &value, allowed),
        Err(VarError::NotPresent) => Ok(None),
        // Never one of the values: the error lists them.
        Err(VarError::NotUnicode(value)) => parse_switch(name, &value.to_string_lossy(), allowed),
    }
}

/// An on/off switch (`0` or `1`): `default` when unset or empty.
pub fn flag(name: &'static str, default: bool) -> Result<bool> {
    Ok(switch(name, &["0", "1"])?.map_or(default, |v| v == "1"))
}

/// [`switch`] over a value already read.
fn parse_switch(
    name: &'static str,
    value: &str,
    allowed: &[&'static str],
) -> Result<Option<&'static str>> {
    if value.is_empty() {
        return Ok(None);
    }
    match allowed.iter().find(|a| **a == value) {
        Some(a) => Ok(Some(a)),
        None => Err(KernelError::Switch(format!(
            "{name}={value:?} is not a value it takes ({}); unset it for the default",
            allowed.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_take_their_values_and_name_the_others() {
        let allowed = ["fused", "own"];
        assert_eq!(parse_switch("X", "", &allowed).unwrap(), None);
        assert_eq!(parse_switch("X", "own", &allowed).unwrap(), Some("own"));
        let err = parse_switch("DINOV2_GEMM", "onw", &allowed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DINOV2_GEMM=\"onw\""), "{err}");
        assert!(err.contains("fused, own"), "{err}");
        assert!(parse_switch("X", "Own", &allowed).is_err());
    }
}
