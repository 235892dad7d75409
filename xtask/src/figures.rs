//! The reliability figures in README.md: collected from the `figure: NAME =
//! VALUE` lines the reliability tests print, and written between two
//! marker lines.

use anyhow::{Context, bail};

pub const BEGIN: &str = "<!-- reliability figures: cargo xtask report -->";
pub const END: &str = "<!-- end of reliability figures -->";

/// The `(name, value)` of every figure line in a test run's output. With
/// `--nocapture` a test's first line follows libtest's "test NAME ... ".
pub fn collect(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| l.split_once("figure: ").map(|(_, f)| f))
        .filter_map(|l| l.split_once(" = "))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `readme` with the text between the markers replaced by a table of
/// `figures`.
pub fn splice(readme: &str, figures: &[(String, String)], machine: &str) -> anyhow::Result<String> {
    if figures.is_empty() {
        bail!("the tests printed no figures");
    }
    let start = readme
        .find(BEGIN)
        .with_context(|| format!("README.md has no line {BEGIN}"))?
        + BEGIN.len();
    let end = readme[start..]
        .find(END)
        .with_context(|| format!("README.md has no line {END} after {BEGIN}"))?
        + start;
    let mut table = format!("\n\nOn {machine}:\n\n| figure | value |\n|---|---|\n");
    for (name, value) in figures {
        table.push_str(&format!("| {name} | {} |\n", value.replace('|', "\\|")));
    }
    table.push('\n');
    Ok(format!("{}{table}{}", &readme[..start], &readme[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_replace_what_was_between_the_markers() {
        let out = "running 1 test\ntest t ... figure: restart.bytes = 12 bytes\nnoise = 3\nfigure: a = b = c\n";
        let figures = collect(out);
        assert_eq!(
            figures,
            [
                ("restart.bytes".to_string(), "12 bytes".to_string()),
                ("a".to_string(), "b = c".to_string())
            ]
        );
        let readme = format!("# x\n{BEGIN}\nold\n{END}\nafter\n");
        let new = splice(&readme, &figures, "a machine").unwrap();
        assert!(new.starts_with(&format!("# x\n{BEGIN}\n\nOn a machine:")));
        assert!(new.contains("| restart.bytes | 12 bytes |\n| a | b = c |\n"));
        assert!(!new.contains("old"));
        assert!(new.ends_with(&format!("{END}\nafter\n")));
        assert_eq!(splice(&new, &figures, "a machine").unwrap(), new);
    }

    #[test]
    fn no_markers_or_no_figures_is_an_error() {
        assert!(splice("# x\n", &collect("figure: a = 1"), "m").is_err());
        assert!(splice(&format!("{BEGIN}{END}"), &[], "m").is_err());
    }
}
