//! The exposition formats, as pure functions: a list of [`Family`]s in, text out, and the
//! choice of format from a request's `Accept` header ([`negotiate`]).
//!
//! Two formats, one model:
//!
//! - Prometheus text 0.0.4 (`text/plain; version=0.0.4`): `# HELP`, `# TYPE` with `counter` or
//!   `gauge`, one line per sample. A counter's family and samples are named with `_total`.
//! - OpenMetrics 1.0.0 (`application/openmetrics-text; version=1.0.0`): `# TYPE` with
//!   `counter`, `gauge`, `stateset` or `info`, `# UNIT` where the family has a unit, `# HELP`,
//!   the samples, and `# EOF` last. A counter family is named without `_total` and its samples
//!   with it; an info family without `_info` and its sample with it.
//!
//! A family is named by its base name ([`Family::name`]): without `_total` for a counter,
//! without `_info` for an info, and ending with its unit (`_seconds`, `_bytes`) when it has
//! one. A state set is one sample per state, labelled with the family's own name (as
//! OpenMetrics requires), 1 for the current state and 0 for the others; the Prometheus format
//! shows it as a gauge with the same series, so a query reads the same from either.
//!
//! ```text
//! # HELP jex_agent_refusals_total Connections and calls refused, by listener and reason.
//! # TYPE jex_agent_refusals_total counter
//! jex_agent_refusals_total{listener="grpc",reason="no_certificate"} 3
//! ```
//!
//! Label values and help texts are escaped (`\\`, `\n`, and `\"` in label values; OpenMetrics
//! also escapes `"` in help). Label names and family names are the agent's own constants;
//! label values come from fixed sets or from the build, never from a client.

use std::fmt::Write as _;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics text format 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// What a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the process restarts).
    Counter,
    /// Any value.
    Gauge,
    /// One sample per state, 1 for the current one.
    StateSet,
    /// Constant labels, value 1.
    Info,
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// An exact integer (counts, bytes, sequence numbers).
    Int(u64),
    /// Anything else.
    Float(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// One sample of a family: its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names (constants) and values.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

/// A metric family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The base name (see the module docs).
    pub name: &'static str,
    /// What it measures, one sentence.
    pub help: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its unit (`seconds`, `bytes`), which the name ends with.
    pub unit: Option<&'static str>,
    /// Its samples.
    pub samples: Vec<Sample>,
}

impl Family {
    /// A family without samples yet.
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            help,
            kind,
            unit: None,
            samples: Vec::new(),
        }
    }

    /// The same family with a unit, which its name must end with.
    pub fn unit(mut self, unit: &'static str) -> Self {
        debug_assert!(self.name.ends_with(unit), "{} has unit {unit}", self.name);
        self.unit = Some(unit);
        self
    }

    /// Adds a sample.
    pub fn sample(mut self, labels: Vec<(&'static str, String)>, value: Value) -> Self {
        self.samples.push(Sample { labels, value });
        self
    }

    /// A gauge or counter with one unlabelled sample.
    pub fn single(name: &'static str, help: &'static str, kind: Kind, value: Value) -> Self {
        Self::new(name, help, kind).sample(Vec::new(), value)
    }

    /// A state set over `states`, `current` (if any) at 1.
    pub fn state_set(
        name: &'static str,
        help: &'static str,
        states: impl IntoIterator<Item = &'static str>,
        current: Option<&str>,
    ) -> Self {
        let mut family = Self::new(name, help, Kind::StateSet);
        for state in states {
            let on = Some(state) == current;
            family = family.sample(vec![(name, state.to_owned())], Value::Int(on.into()));
        }
        family
    }

    /// The name a sample line carries.
    pub fn sample_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Info => format!("{}_info", self.name),
            Kind::Gauge | Kind::StateSet => self.name.to_owned(),
        }
    }
}

/// Encodes `families` in `format`.
pub fn encode(families: &[Family], format: Format) -> String {
    let mut out = String::with_capacity(families.len() * 160);
    for family in families {
        let sample_name = family.sample_name();
        let (meta_name, kind) = match format {
            Format::Prometheus => (
                sample_name.as_str(),
                match family.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge | Kind::StateSet | Kind::Info => "gauge",
                },
            ),
            Format::OpenMetrics => (
                family.name,
                match family.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::StateSet => "stateset",
                    Kind::Info => "info",
                },
            ),
        };
        let _ = writeln!(
            out,
            "# HELP {meta_name} {}",
            escape_help(family.help, format)
        );
        let _ = writeln!(out, "# TYPE {meta_name} {kind}");
        if let (Format::OpenMetrics, Some(unit)) = (format, family.unit) {
            let _ = writeln!(out, "# UNIT {meta_name} {unit}");
        }
        for sample in &family.samples {
            out.push_str(&sample_name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{name}=\"{}\"", escape_label(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", sample.value);
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn escape_label(value: &str) -> String {
    escape(value, true)
}

fn escape_help(help: &str, format: Format) -> String {
    escape(help, format == Format::OpenMetrics)
}

fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// The format to answer a request with, from its `Accept` header: OpenMetrics 1.0.0 when the
/// client prefers it (`application/openmetrics-text` without a version or with version
/// 1.0.0, at a quality above every other acceptable type), else the Prometheus text format
/// (also for no header, `*/*`, or anything unknown: every scraper reads it).
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Prometheus;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(v.trim().trim_matches('"').to_owned()),
                    _ => {}
                }
            }
        }
        let format = match (media.as_str(), version.as_deref()) {
            ("application/openmetrics-text", None | Some("1.0.0")) => Format::OpenMetrics,
            ("text/plain", None | Some("0.0.4")) | ("*/*" | "text/*", _) => Format::Prometheus,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(best_q, _)| q > best_q) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Prometheus, |(_, format)| format)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample_families() -> Vec<Family> {
        vec![
            Family::new("jex_agent_build", "How the agent was built.", Kind::Info).sample(
                vec![
                    ("version", "0.1.0".into()),
                    ("rustc", "rustc \"1.95\"\\x\ny".into()),
                ],
                Value::Int(1),
            ),
            Family::single(
                "jex_agent_start_time_seconds",
                "When the agent started.",
                Kind::Gauge,
                Value::Float(1_700_000_000.25),
            )
            .unit("seconds"),
            Family::new(
                "jex_agent_refusals",
                "Refusals, by \"reason\".\nSecond line \\ here.",
                Kind::Counter,
            )
            .sample(vec![("reason", "no_role".into())], Value::Int(3))
            .sample(vec![("reason", "not_tls".into())], Value::Int(0)),
            Family::state_set(
                "jex_agent_lifecycle",
                "The host's lifecycle.",
                ["SERVING", "ERASING"],
                Some("ERASING"),
            ),
            Family::new("jex_host_odd", "Special values.", Kind::Gauge)
                .sample(vec![("v", "nan".into())], Value::Float(f64::NAN))
                .sample(vec![("v", "inf".into())], Value::Float(f64::INFINITY))
                .sample(vec![("v", "-inf".into())], Value::Float(f64::NEG_INFINITY)),
        ]
    }

    #[test]
    fn prometheus_text_has_help_type_total_and_escapes() {
        let text = encode(&sample_families(), Format::Prometheus);
        assert_eq!(
            text,
            r#"# HELP jex_agent_build_info How the agent was built.
# TYPE jex_agent_build_info gauge
jex_agent_build_info{version="0.1.0",rustc="rustc \"1.95\"\\x\ny"} 1
# HELP jex_agent_start_time_seconds When the agent started.
# TYPE jex_agent_start_time_seconds gauge
jex_agent_start_time_seconds 1700000000.25
# HELP jex_agent_refusals_total Refusals, by "reason".\nSecond line \\ here.
# TYPE jex_agent_refusals_total counter
jex_agent_refusals_total{reason="no_role"} 3
jex_agent_refusals_total{reason="not_tls"} 0
# HELP jex_agent_lifecycle The host's lifecycle.
# TYPE jex_agent_lifecycle gauge
jex_agent_lifecycle{jex_agent_lifecycle="SERVING"} 0
jex_agent_lifecycle{jex_agent_lifecycle="ERASING"} 1
# HELP jex_host_odd Special values.
# TYPE jex_host_odd gauge
jex_host_odd{v="nan"} NaN
jex_host_odd{v="inf"} +Inf
jex_host_odd{v="-inf"} -Inf
"#
        );
    }

    #[test]
    fn openmetrics_has_base_names_units_state_sets_and_eof() {
        let text = encode(&sample_families(), Format::OpenMetrics);
        assert_eq!(
            text,
            r#"# HELP jex_agent_build How the agent was built.
# TYPE jex_agent_build info
jex_agent_build_info{version="0.1.0",rustc="rustc \"1.95\"\\x\ny"} 1
# HELP jex_agent_start_time_seconds When the agent started.
# TYPE jex_agent_start_time_seconds gauge
# UNIT jex_agent_start_time_seconds seconds
jex_agent_start_time_seconds 1700000000.25
# HELP jex_agent_refusals Refusals, by \"reason\".\nSecond line \\ here.
# TYPE jex_agent_refusals counter
jex_agent_refusals_total{reason="no_role"} 3
jex_agent_refusals_total{reason="not_tls"} 0
# HELP jex_agent_lifecycle The host's lifecycle.
# TYPE jex_agent_lifecycle stateset
jex_agent_lifecycle{jex_agent_lifecycle="SERVING"} 0
jex_agent_lifecycle{jex_agent_lifecycle="ERASING"} 1
# HELP jex_host_odd Special values.
# TYPE jex_host_odd gauge
jex_host_odd{v="nan"} NaN
jex_host_odd{v="inf"} +Inf
jex_host_odd{v="-inf"} -Inf
# EOF
"#
        );
    }

    #[test]
    fn an_empty_exposition_is_empty_or_just_eof() {
        assert_eq!(encode(&[], Format::Prometheus), "");
        assert_eq!(encode(&[], Format::OpenMetrics), "# EOF\n");
    }

    #[test]
    fn integers_stay_exact_and_floats_round_trip() {
        assert_eq!(Value::Int(u64::MAX).to_string(), "18446744073709551615");
        assert_eq!(Value::Float(0.1234).to_string(), "0.1234");
        assert_eq!(Value::Float(2.0).to_string(), "2");
        let big = Value::Float(1.5e300).to_string();
        assert_eq!(big.parse::<f64>().unwrap(), 1.5e300);
    }

    #[test]
    fn accept_headers_choose_the_format() {
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(negotiate(None), Format::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // A version this agent does not write, or a quality of 0, is not chosen.
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=0.0.1")),
            Format::Prometheus
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Prometheus
        );
        // The higher quality wins, whatever the order.
        assert_eq!(
            negotiate(Some(
                "text/plain;q=0.5, application/openmetrics-text;version=1.0.0;q=0.9"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;q=0.3, text/plain;version=0.0.4"
            )),
            Format::Prometheus
        );
        assert_eq!(negotiate(Some("application/json")), Format::Prometheus);
    }

    #[test]
    fn content_types_name_their_versions() {
        assert_eq!(
            Format::Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(Format::OpenMetrics.content_type().contains("version=1.0.0"));
    }
}
