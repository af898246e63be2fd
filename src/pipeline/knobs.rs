//! The method's knobs as a user gives them: a preset plus any overrides, on the command
//! line (flags) or in a server request (form fields of the same names, `t_edit` for
//! `--t-edit`). Without a preset the base is the model's recommended knobs when its
//! folder has them ([`RECOMMENDED_FILE`]), else the authors' in-domain preset.

use std::str::FromStr;

use crate::diffusion::method::{BadKnob, Preset, Settings};

/// A model folder's recommended knobs: a JSON object of knob names (as [`KNOB_NAMES`])
/// to values, e.g. `{"preset": "fast", "gamma": 0.6}`, used where the user names no
/// preset. Keys starting with `_` are comments (measurements, provenance).
pub const RECOMMENDED_FILE: &str = "diffstyle_knobs.json";

/// The recommended knobs of the model at `model` (a diffusers folder; a single weights
/// file has none), or `None`.
pub fn recommended_for(model: &std::path::Path) -> anyhow::Result<Option<Knobs>> {
    let file = model.join(RECOMMENDED_FILE);
    if !model.is_dir() || !file.exists() {
        return Ok(None);
    }
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{shown}: cannot read ({e})"))?;
    Knobs::from_json(&shown, &text).map(Some)
}

/// Knobs as given; `None` = the base's value (the preset's, or without a preset the
/// model's recommended knobs, see [`Knobs::over`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Knobs {
    /// `None`: no preset named (the in-domain preset unless the model recommends knobs).
    pub preset: Option<Preset>,
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
    /// The settings these knobs give on their own (no preset named: in-domain).
    pub fn settings(&self) -> Settings {
        let p = self.preset.unwrap_or(Preset::InDomain).settings();
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

    /// These knobs on top of a model's recommended ones: with a preset named the
    /// recommendation is ignored (a preset is a complete starting point); without one,
    /// each knob not given takes the recommended value.
    pub fn over(&self, recommended: Option<&Knobs>) -> Knobs {
        match recommended {
            Some(r) if self.preset.is_none() => Knobs {
                preset: r.preset,
                gamma: self.gamma.or(r.gamma),
                t_edit: self.t_edit.or(r.t_edit),
                inv_steps: self.inv_steps.or(r.inv_steps),
                gen_steps: self.gen_steps.or(r.gen_steps),
                replace_steps: self.replace_steps.or(r.replace_steps),
                t_boost: self.t_boost.or(r.t_boost),
                dt_lambda: self.dt_lambda.or(r.dt_lambda),
                dt_end: self.dt_end.or(r.dt_end),
                omega: self.omega.or(r.omega),
                seed: self.seed.or(r.seed),
            },
            _ => self.clone(),
        }
    }

    /// Reads a model's recommended knobs (see [`RECOMMENDED_FILE`]); errors name the file
    /// and the knob.
    pub fn from_json(file: &str, text: &str) -> anyhow::Result<Knobs> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{file}: not valid JSON ({e})"))?;
        let obj = v.as_object().ok_or_else(|| anyhow::anyhow!("{file}: expected a JSON object of knobs"))?;
        let mut k = Knobs::default();
        for (name, val) in obj.iter().filter(|(n, _)| !n.starts_with('_')) {
            let text = match val {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                other => anyhow::bail!("{file}: knob {name} must be a number or a string, got {other}"),
            };
            k.set(name, &text).map_err(|e| anyhow::anyhow!("{file}: {name} {}", e.problem))?;
        }
        Ok(k)
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
                self.preset = Some(<Preset as clap::ValueEnum>::from_str(t, true).map_err(|_| BadKnob {
                    knob: "preset",
                    problem: format!("must be one of in-domain, harmonize, fast, got '{}'", t.escape_default()),
                })?)
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
        assert_eq!(k.preset, Some(Preset::Fast));
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

    #[test]
    fn recommended_knobs_fill_what_the_user_left_out_unless_a_preset_is_named() {
        let rec = Knobs::from_json("r.json", r#"{"_why": "sweep", "preset": "fast", "gamma": 0.6, "t_edit": "300"}"#)
            .unwrap();
        let user = Knobs { gamma: Some(0.2), ..Default::default() };
        let s = user.over(Some(&rec)).settings();
        assert_eq!((s.gamma, s.t_edit, s.gen_steps), (0.2, 300, Preset::Fast.settings().gen_steps));
        let named = Knobs { preset: Some(Preset::InDomain), ..Default::default() };
        assert_eq!(named.over(Some(&rec)).settings(), Preset::InDomain.settings());
        assert_eq!(Knobs::default().over(None).settings(), Preset::InDomain.settings());
        for (bad, what) in [
            ("[1]", "object"),
            (r#"{"gamma": true}"#, "gamma"),
            (r#"{"colour": 1}"#, "colour"),
            (r#"{"t_edit": 1.5}"#, "t_edit"),
            ("{", "JSON"),
        ] {
            let e = Knobs::from_json("r.json", bad).unwrap_err().to_string();
            assert!(e.contains("r.json") && e.contains(what), "{bad}: {e}");
        }
    }
}
