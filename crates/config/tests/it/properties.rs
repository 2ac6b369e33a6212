//! Property tests of the parsers that read outside input: generated and mutated
//! `.env` files, and mutated config files in every format. None may panic or hang;
//! valid generated input reads back exactly.

use std::path::Path;

use fleet_config::Format;
use fleet_config::envfile;
use proptest::prelude::*;

use crate::harness::Project;

const FIXTURES: &[(&str, Format)] = &[
    ("fleet.toml", Format::Toml),
    ("ecosystem.json", Format::Json),
    ("ecosystem.yaml", Format::Yaml),
];

fn fixture(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn key() -> impl Strategy<Value = String> {
    ("[A-Za-z_]", "[A-Za-z0-9_]{0,12}").prop_map(|(a, b)| format!("{a}{b}"))
}

/// Printable values without the characters a quoted value would need escaped.
fn value() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::char::range(' ', '~').prop_filter("quote", |c| !"\"'`\\".contains(*c)),
            Just('é'),
            Just('$'),
        ],
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// A mutation: replace, insert or delete bytes at a few places.
fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(at, op, byte) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % bytes.len()
        };
        match op % 3 {
            0 if !bytes.is_empty() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec(
        (
            any::<usize>(),
            any::<u8>(),
            prop_oneof![
                Just(b'"'),
                Just(b'\''),
                Just(b'\n'),
                Just(b'='),
                Just(b'['),
                Just(b'{'),
                Just(b'}'),
                Just(b':'),
                Just(b'#'),
                Just(b'\\'),
                any::<u8>(),
            ],
        ),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn env_files_never_panic(text in proptest::collection::vec(any::<char>(), 0..400)) {
        let text: String = text.into_iter().collect();
        let parsed = envfile::parse(&text);
        let lines = text.matches('\n').count() as u32 + 1;
        prop_assert!(parsed.skipped_lines.iter().all(|&l| l >= 1 && l <= lines));
    }

    #[test]
    fn generated_env_files_read_back(
        vars in proptest::collection::btree_map(key(), value(), 0..12),
        quoting in any::<u8>(),
    ) {
        let mut text = String::from("# generated\n");
        for (i, (k, v)) in vars.iter().enumerate() {
            let line = match (quoting as usize + i) % 3 {
                0 => format!("{k}=\"{v}\"\n"),
                1 => format!("export {k}='{v}'\n"),
                _ => format!("{k} = `{v}` # comment\n"),
            };
            text.push_str(&line);
        }
        let parsed = envfile::parse(&text);
        prop_assert_eq!(parsed.vars, vars);
        prop_assert!(parsed.skipped_lines.is_empty());
    }

    #[test]
    fn mutated_env_files_never_panic(edits in edits()) {
        let text = "A=1\nexport B=\"two\nlines\"\nC='x' # c\nD: y\n";
        let _ = envfile::parse(&mutate(text, &edits));
    }

    #[test]
    fn mutated_config_files_never_panic(which in 0..FIXTURES.len(), edits in edits()) {
        let (name, format) = FIXTURES[which];
        let project = Project::new();
        let text = mutate(&fixture(name), &edits);
        // Errors are fine; a panic fails the test.
        let _ = fleet_config::load_str(&text, format, Path::new(name), &project.opts);
    }
}
