//! diffusers' `scheduler_config.json`: the betas of a model's training schedule.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::json::*;
use crate::model::schedule::{
    linear_betas, scaled_linear_betas, squaredcos_cap_v2_betas, validate_betas, Schedule, DDPM_BETA_END,
    DDPM_BETA_START, DDPM_STEPS,
};

/// Betas from a diffusers `scheduler_config.json` (any of DDPM / DDIM / PNDM ...
/// schedulers): `trained_betas` when non-null, else `beta_schedule` linear (float64
/// linspace, as the authors), scaled_linear or squaredcos_cap_v2 over
/// `num_train_timesteps`. Absent keys take the schedulers' defaults (linear,
/// 0.0001 .. 0.02, 1000).
pub fn parse_scheduler_config(text: &str) -> Result<Vec<f64>> {
    let v: Value = serde_json::from_str(text).context("scheduler config is not valid JSON")?;
    let m = v.as_object().ok_or_else(|| anyhow!("the scheduler config is not a JSON object"))?;
    // A model trained to predict something other than the noise changes the sampler.
    check_str(m, "prediction_type", &["epsilon"], false)?;
    if get_bool(m, "rescale_betas_zero_snr", false)? {
        bail!("unsupported rescale_betas_zero_snr true");
    }
    let betas = match field(m, "trained_betas") {
        Field::Val(x) => {
            as_list("trained_betas", x)?.iter().map(|b| as_f64("trained_betas", b)).collect::<Result<Vec<f64>>>()?
        }
        Field::Absent | Field::Null => {
            let n = get_usize(m, "num_train_timesteps", Some(DDPM_STEPS))?;
            let start = get_f64(m, "beta_start", Some(DDPM_BETA_START))?;
            let end = get_f64(m, "beta_end", Some(DDPM_BETA_END))?;
            let kind = match field(m, "beta_schedule") {
                Field::Absent => "linear".to_string(),
                Field::Null => bail!("unsupported beta_schedule null"),
                Field::Val(x) => as_str("beta_schedule", x)?.to_string(),
            };
            match kind.as_str() {
                "linear" => linear_betas(start, end, n),
                "scaled_linear" => scaled_linear_betas(start, end, n),
                "squaredcos_cap_v2" => squaredcos_cap_v2_betas(n),
                other => bail!(
                    "unsupported beta_schedule {other:?} (supported: linear, scaled_linear, \
                     squaredcos_cap_v2, or trained_betas)"
                ),
            }
        }
    };
    validate_betas(&betas)?;
    Ok(betas)
}

/// Reads a `scheduler_config.json` file into a [`Schedule`].
pub fn load_scheduler_config(path: &Path) -> Result<Schedule> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let betas = parse_scheduler_config(&text).with_context(|| format!("scheduler config {}", path.display()))?;
    Ok(Schedule::from_betas(&betas))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_refusals() {
        assert_eq!(parse_scheduler_config("{}").unwrap(), crate::model::schedule::default_betas());
        let b = parse_scheduler_config(r#"{"beta_schedule": "linear", "trained_betas": [0.1, 0.2]}"#).unwrap();
        assert_eq!(b, vec![0.1, 0.2]);
        let b = parse_scheduler_config(r#"{"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 10}"#);
        assert_eq!(b.unwrap(), squaredcos_cap_v2_betas(10));
        let e = parse_scheduler_config(r#"{"prediction_type": "v_prediction"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("prediction_type"), "{e:#}");
        let e = parse_scheduler_config(r#"{"trained_betas": [0.5, 1.0]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("beta[1]"), "{e:#}");
    }
}
