//! Query strings of job requests, read strictly.
//!
//! A parameter that is unknown, repeated, malformed or out of range is an
//! error naming it: a typo such as `widht=100` must not silently give an
//! image of the input's size.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use thiserror::Error;

/// A query parameter that cannot be used. Answered with 400.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("parameter {parameter}: {problem}")]
pub struct ParamError {
    /// The parameter's name, as the client wrote it.
    pub parameter: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ParamError {
    fn new(parameter: &str, problem: impl Into<String>) -> Self {
        Self {
            parameter: parameter.to_owned(),
            problem: problem.into(),
        }
    }
}

/// The decoded parameters of one query string.
#[derive(Debug)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Decodes `query`, refusing names outside `known` and names given
    /// twice.
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, ParamError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !known.contains(&name.as_ref()) {
                let known = known.join(", ");
                return Err(ParamError::new(&name, format!("unknown; known: {known}")));
            }
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return Err(ParamError::new(&name, "given more than once"));
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self { pairs })
    }

    /// The raw value of `name`, when given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(seen, _)| seen == name)
            .map(|(_, value)| value.as_str())
    }

    /// A number within `range`, when given.
    pub fn number<T>(&self, name: &str, range: RangeInclusive<T>) -> Result<Option<T>, ParamError>
    where
        T: FromStr + PartialOrd + Display,
    {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        let outside = || {
            let (lo, hi) = (range.start(), range.end());
            ParamError::new(
                name,
                format!("{text:?} is not a whole number from {lo} to {hi}"),
            )
        };
        let value: T = text.parse().map_err(|_| outside())?;
        if range.contains(&value) {
            Ok(Some(value))
        } else {
            Err(outside())
        }
    }

    /// `true` or `false`, when given.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, ParamError> {
        match self.get(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ParamError::new(
                name,
                format!("{other:?} is neither true nor false"),
            )),
        }
    }

    /// One of `choices`, when given.
    pub fn choice<T: Copy>(
        &self,
        name: &str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, ParamError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        choices
            .iter()
            .find(|(label, _)| *label == text)
            .map(|(_, value)| Some(*value))
            .ok_or_else(|| {
                let labels: Vec<&str> = choices.iter().map(|(label, _)| *label).collect();
                let labels = labels.join(", ");
                ParamError::new(name, format!("{text:?} is not one of {labels}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["width", "upscale"];

    #[test]
    fn an_empty_or_missing_query_has_no_parameters() {
        for query in [None, Some("")] {
            let parsed = Query::parse(query, KNOWN).unwrap();
            assert_eq!(parsed.get("width"), None);
        }
    }

    #[test]
    fn unknown_and_repeated_names_are_refused_by_name() {
        let err = Query::parse(Some("widht=3"), KNOWN).unwrap_err();
        assert_eq!(err.parameter, "widht");

        let err = Query::parse(Some("width=3&width=4"), KNOWN).unwrap_err();
        assert_eq!(err.parameter, "width");
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn numbers_are_checked_against_their_range() {
        let query = Query::parse(Some("width=0"), KNOWN).unwrap();
        let err = query.number("width", 1u32..=10).unwrap_err();
        assert!(err.to_string().contains("from 1 to 10"), "{err}");

        let query = Query::parse(Some("width=-3"), KNOWN).unwrap();
        assert!(query.number("width", 1u32..=10).is_err());

        let query = Query::parse(Some("width=7"), KNOWN).unwrap();
        assert_eq!(query.number("width", 1u32..=10).unwrap(), Some(7));
    }

    #[test]
    fn flags_are_true_or_false_only() {
        let query = Query::parse(Some("upscale=yes"), KNOWN).unwrap();
        assert_eq!(query.flag("upscale").unwrap_err().parameter, "upscale");

        let query = Query::parse(Some("upscale=true"), KNOWN).unwrap();
        assert_eq!(query.flag("upscale").unwrap(), Some(true));
    }

    #[test]
    fn values_are_percent_decoded() {
        let query = Query::parse(Some("width=%31%32"), KNOWN).unwrap();
        assert_eq!(query.number("width", 1u32..=100).unwrap(), Some(12));
    }
}
