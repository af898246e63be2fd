//! The method's knobs as a user gives them: a preset plus any overrides, on the command
//! line (flags) or in a server request (form fields of the same names, `t_edit` for
//! `--t-edit`).

use std::str::FromStr;

use crate::diffusion::method::{BadKnob, Preset, Settings};

/// Knobs as given; `None` = the preset's value.
#[derive(Clone, Debug, PartialEq)]
pub struct Knobs {
    pub preset: Preset,
    pub gamma: Option<f32>,
    pub t_edit: Option<i64>,
    pub inv_steps: Option<usize>,
    pub gen_steps: Option<usize>,
    pub replace_steps: Option<usize>,
    pub t_boost: Option<i64>,
    pub dt_lambda: Option<f32>,
    pub dt_end: Option<i64>,
    pub omega: Option<f32>,
    pub seed: Option<u64>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            preset: Preset::InDomain,
            gamma: None,
            t_edit: None,
            inv_steps: None,
            gen_steps: None,
            replace_steps: None,
            t_boost: None,
            dt_lambda: None,
            dt_end: None,
            omega: None,
            seed: None,
        }
    }
}

/// Every knob's name, `preset` first: the server's form fields.
pub const KNOB_NAMES: [&str; 11] = [
    "preset",
    "gamma",
    "t_edit",
    "inv_steps",
    "gen_steps",
    "replace_steps",
    "t_boost",
    "dt_lambda",
    "dt_end",
    "omega",
    "seed",
];

fn number<T: FromStr>(knob: &'static str, text: &str, what: &str) -> Result<Option<T>, BadKnob> {
    text.parse::<T>()
        .map(Some)
        .map_err(|_| BadKnob { knob, problem: format!("must be {what}, got '{}'", text.escape_default()) })
}

impl Knobs {
    pub fn settings(&self) -> Settings {
        let p = self.preset.settings();
        Settings {
            gamma: self.gamma.unwrap_or(p.gamma),
            t_edit: self.t_edit.unwrap_or(p.t_edit),
            inv_steps: self.inv_steps.unwrap_or(p.inv_steps),
            gen_steps: self.gen_steps.unwrap_or(p.gen_steps),
            replace_steps: self.replace_steps.unwrap_or(p.replace_steps),
            t_boost: self.t_boost.unwrap_or(p.t_boost),
            dt_lambda: self.dt_lambda.unwrap_or(p.dt_lambda),
            dt_end: self.dt_end.unwrap_or(p.dt_end),
            omega: self.omega.unwrap_or(p.omega),
            seed: self.seed.unwrap_or(p.seed),
        }
    }

    /// Whether `name` is a knob (see [`KNOB_NAMES`]).
    pub fn is_knob(name: &str) -> bool {
        KNOB_NAMES.contains(&name)
    }

    /// Sets knob `name` from its text form (surrounding whitespace ignored). Errors name
    /// the knob: an unknown name, text that is not a number of the knob's kind, or a
    /// preset that does not exist. Ranges are checked later, by `Settings::check_knobs`.
    pub fn set(&mut self, name: &str, text: &str) -> Result<(), BadKnob> {
        let t = text.trim();
        const INT: &str = "an integer";
        const COUNT: &str = "a non-negative integer";
        const NUM: &str = "a number";
        match name {
            "preset" => {
                self.preset = <Preset as clap::ValueEnum>::from_str(t, true).map_err(|_| BadKnob {
                    knob: "preset",
                    problem: format!("must be one of in-domain, harmonize, fast, got '{}'", t.escape_default()),
                })?
            }
            "gamma" => self.gamma = number("gamma", t, NUM)?,
            "t_edit" => self.t_edit = number("t_edit", t, INT)?,
            "inv_steps" => self.inv_steps = number("inv_steps", t, COUNT)?,
            "gen_steps" => self.gen_steps = number("gen_steps", t, COUNT)?,
            "replace_steps" => self.replace_steps = number("replace_steps", t, COUNT)?,
            "t_boost" => self.t_boost = number("t_boost", t, INT)?,
            "dt_lambda" => self.dt_lambda = number("dt_lambda", t, NUM)?,
            "dt_end" => self.dt_end = number("dt_end", t, INT)?,
            "omega" => self.omega = number("omega", t, NUM)?,
            "seed" => self.seed = number("seed", t, COUNT)?,
            _ => {
                return Err(BadKnob { knob: "", problem: format!("'{}' is not a knob", name.escape_default()) });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_knob_name_sets_its_field_and_nothing_else() {
        for name in KNOB_NAMES.iter().filter(|n| **n != "preset") {
            let mut k = Knobs::default();
            k.set(name, " 3 ").unwrap();
            let changed = serde_json::to_value(k.settings()).unwrap();
            let base = serde_json::to_value(Knobs::default().settings()).unwrap();
            let diff: Vec<&String> =
                changed.as_object().unwrap().keys().filter(|f| changed[f.as_str()] != base[f.as_str()]).collect();
            assert_eq!(diff, vec![*name], "setting {name}");
        }
        let mut k = Knobs::default();
        k.set("preset", "Fast").unwrap();
        assert_eq!(k.settings(), Preset::Fast.settings());
    }

    #[test]
    fn bad_text_names_the_knob() {
        let mut k = Knobs::default();
        assert_eq!(k.set("t_edit", "1.5").unwrap_err().knob, "t_edit");
        assert_eq!(k.set("seed", "-1").unwrap_err().knob, "seed");
        assert_eq!(k.set("gamma", "").unwrap_err().knob, "gamma");
        assert_eq!(k.set("preset", "slow").unwrap_err().knob, "preset");
        assert!(k.set("colour", "1").is_err());
        assert!(!Knobs::is_knob("") && !Knobs::is_knob("colour") && Knobs::is_knob("dt_end"));
    }
}
