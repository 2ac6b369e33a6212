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

#[test]
fn app_names_take_what_pm2_takes_and_files_get_a_safe_name() {
    for good in ["My APP", "api/development", "api-2", "123", "..", "été"] {
        assert_eq!(check_app_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "all",
        " api",
        "api ",
        "/api/",
        "#1",
        "a\nb",
        &"x".repeat(65),
    ] {
        assert!(check_app_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(file_name_of("My APP"), "My-APP");
    assert_eq!(file_name_of("api/development"), "api-development");
    assert_eq!(file_name_of("../../evil"), "..-..-evil");
    assert_eq!(file_name_of(".."), "--");
    assert_eq!(file_name_of("my_app.v2"), "my_app.v2");
}
