//! App names: what `check_name` accepts and refuses.

use super::*;

#[test]
fn names() {
    for good in ["api", "api-2", "my_app.v2", "123", "A"] {
        assert_eq!(check_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "all",
        "ALL",
        "a b",
        "/api/",
        "a/b",
        "..",
        &"x".repeat(65),
        "é",
    ] {
        assert!(check_name(bad).is_err(), "{bad}");
    }
}
