//! `completions`: a shell completion script generated from the command
//! line definitions.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// The binary's name, as the shells see it.
const BIN: &str = "tls-policyd";

/// Write the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    match shell {
        Shell::Bash => {
            let text = String::from_utf8(script).expect("clap_complete writes UTF-8");
            script = fix_bash_hyphenated_name(&text, BIN).into_bytes();
        }
        Shell::Fish => script.extend(fish_positional_values(&Cli::command()).into_bytes()),
        _ => {}
    }
    let _ = out.write_all(&script);
}

/// clap_complete's fish script completes options only; add the values of
/// subcommands' positional arguments that have a fixed set
/// (`completions SHELL`).
fn fish_positional_values(cli: &clap::Command) -> String {
    let function = format!("__fish_{}_using_subcommand", BIN.replace('-', "_"));
    let mut out = String::new();
    for sub in cli.get_subcommands() {
        for arg in sub.get_positionals() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() {
                out += &format!(
                    "complete -c {BIN} -n \"{function} {}\" -f -a \"{}\"\n",
                    sub.get_name(),
                    values.join(" ")
                );
            }
        }
    }
    out
}

/// clap_complete (up to 4.6 at least) names the bash function's states
/// after a hyphenated binary inconsistently: the loop over the words sets
/// `cmd="tls__policyd__subcmd__serve"` but the `case` below matches
/// `tls__subcmd__policyd__subcmd__serve)`, so nothing after the first word
/// ever completed. Rename the case labels to the names the loop sets.
fn fix_bash_hyphenated_name(script: &str, bin: &str) -> String {
    let wrong = format!("{}__subcmd__", bin.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", bin.replace('-', "__"));
    if wrong == right {
        return script.to_string();
    }
    script
        .lines()
        .map(|line| {
            let label = line.trim_start();
            match label.strip_prefix(&wrong) {
                Some(rest) if label.ends_with(')') && !label.contains(' ') => {
                    let indent = &line[..line.len() - label.len()];
                    format!("{indent}{right}{rest}\n")
                }
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_case_labels_match_the_states_the_loop_sets() {
        let mut out = Vec::new();
        completions(Shell::Bash, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("tls__subcmd__policyd"), "{text}");
        // Every state the word loop can set has a case of its own.
        for line in text.lines() {
            if let Some(state) = line
                .trim()
                .strip_prefix("cmd=\"")
                .and_then(|s| s.strip_suffix('"'))
                && !state.is_empty()
            {
                assert!(
                    text.contains(&format!("\n        {state})\n")),
                    "no case for {state}"
                );
            }
        }
    }

    #[test]
    fn fish_completes_the_shells_of_completions() {
        let mut out = Vec::new();
        completions(Shell::Fish, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("function __fish_tls_policyd_using_subcommand"));
        assert!(text.ends_with(
            "complete -c tls-policyd -n \"__fish_tls_policyd_using_subcommand completions\" \
             -f -a \"bash elvish fish powershell zsh\"\n"
        ));
    }

    #[test]
    fn names_without_a_hyphen_are_left_alone() {
        let s = "        foo__subcmd__serve)\n";
        assert_eq!(fix_bash_hyphenated_name(s, "foo"), s);
    }
}
