//! Dense inputs by name with the standardisation training gave them, so that raw
//! rows at prediction time become the inputs training used: `(raw − mean) / std`.
//! A checkpoint may carry them (`Checkpoint::with_dense_inputs`), as it carries the
//! categorical fields' [`Encoders`](super::categorical::Encoders).

use crate::{Error, Result};

/// One dense input: its name and the standardisation applied to its raw values.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseInput {
    /// What the input is (e.g. the column of a raw file it is read from).
    pub name: String,
    /// Subtracted from the raw value.
    pub mean: f64,
    /// What the centred value is divided by: finite and positive.
    pub std: f64,
}

impl DenseInput {
    /// The input of a raw value: `(raw − mean) / std`, computed in `f64`, then
    /// rounded to `f32`.
    pub fn apply(&self, raw: f64) -> f32 {
        ((raw - self.mean) / self.std) as f32
    }
}

/// Checks `inputs` describe `count` dense inputs: as many entries, names non-empty
/// and distinct, means finite, standard deviations finite and positive. `ctx` names
/// the caller in errors.
pub fn check_dense_inputs(ctx: &str, inputs: &[DenseInput], count: usize) -> Result<()> {
    if inputs.len() != count {
        return Err(Error::invalid(
            ctx,
            format!(
                "{} dense inputs are described, the model has {count}",
                inputs.len()
            ),
        ));
    }
    for (i, input) in inputs.iter().enumerate() {
        let name = &input.name;
        if name.is_empty() {
            return Err(Error::invalid(ctx, format!("dense input {i} has no name")));
        }
        if inputs[..i].iter().any(|other| other.name == *name) {
            return Err(Error::invalid(
                ctx,
                format!("dense input `{name}` is described twice"),
            ));
        }
        if !input.mean.is_finite() || !input.std.is_finite() || input.std <= 0.0 {
            return Err(Error::invalid(
                ctx,
                format!(
                    "dense input `{name}` (input {i}) has mean {} and std {}; a finite \
                     mean and a finite std > 0 are needed",
                    input.mean, input.std
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, mean: f64, std: f64) -> DenseInput {
        DenseInput {
            name: name.into(),
            mean,
            std,
        }
    }

    #[test]
    fn applies_the_standardisation() {
        assert_eq!(input("age", 30.0, 4.0).apply(38.0), 2.0);
    }

    #[test]
    fn bad_descriptions_are_named() {
        let good = [input("age", 30.0, 4.0), input("wage", 0.0, 1.0)];
        check_dense_inputs("t", &good, 2).unwrap();
        let count = check_dense_inputs("t", &good, 3).unwrap_err().to_string();
        assert!(
            count.contains("2 dense inputs") && count.contains("has 3"),
            "{count}"
        );
        let twice = [input("age", 30.0, 4.0), input("age", 0.0, 1.0)];
        let message = check_dense_inputs("t", &twice, 2).unwrap_err().to_string();
        assert!(message.contains("`age` is described twice"), "{message}");
        for bad in [
            input("w", 0.0, 0.0),
            input("w", f64::NAN, 1.0),
            input("w", 0.0, -1.0),
        ] {
            let message = check_dense_inputs("t", &[bad], 1).unwrap_err().to_string();
            assert!(message.contains("`w`"), "{message}");
        }
        let unnamed = check_dense_inputs("t", &[input("", 0.0, 1.0)], 1).unwrap_err();
        assert!(unnamed.to_string().contains("no name"));
    }
}
