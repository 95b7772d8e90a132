//! Telemetry: metric primitives rendered as Prometheus text, log setup, and the escaping
//! of outside text in log fields ([`untrusted`]).
//!
//! This module owns no metric of the gateway: each module defines the metrics it counts,
//! with label sets made from its own types ([`label_set!`](crate::label_set)), and implements [`Collect`];
//! `/metrics` renders them all. Metrics are plain atomics with fixed label sets: the
//! fan-out bumps them per delivery, so they cost no more than an uncontended add.

use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::config::{Config, LogFormat};

/// A fixed set of label values, one label key: the values of a fieldless enum.
pub trait Label: Copy + 'static {
    /// Every value, in index order.
    const ALL: &'static [Self];
    /// The label's key, e.g. `reason`.
    const KEY: &'static str;
    /// The label's value.
    fn label(self) -> &'static str;
    /// Position in [`Label::ALL`].
    fn index(self) -> usize;
}

/// Declares a fieldless enum whose variants are the values of one metric label, with
/// `as_str` and a [`Label`] implementation. Variants are listed once, so the label set,
/// the names and the indexes cannot drift apart.
#[macro_export]
macro_rules! label_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $key:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Its metric label (and, where it is sent to clients, its `reason`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $value, )*
                }
            }
        }

        impl $crate::telemetry::Label for $name {
            const ALL: &'static [Self] = &[$( $name::$variant, )*];
            const KEY: &'static str = $key;
            fn label(self) -> &'static str {
                self.as_str()
            }
            fn index(self) -> usize {
                // Variants carry no data and no explicit discriminants, so this is their
                // position in `ALL`.
                self as usize
            }
        }
    };
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    /// Adds `d` (negative to subtract).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Relaxed);
    }
    /// Raises the value to `v` if it is lower: a high-water mark.
    pub fn raise(&self, v: i64) {
        self.0.fetch_max(v, Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// One counter or gauge per value of a label.
#[derive(Debug)]
pub struct Family<L: Label> {
    values: Box<[AtomicI64]>,
    labels: PhantomData<L>,
}

impl<L: Label> Default for Family<L> {
    fn default() -> Self {
        Family {
            values: L::ALL.iter().map(|_| AtomicI64::new(0)).collect(),
            labels: PhantomData,
        }
    }
}

impl<L: Label> Family<L> {
    /// Adds one for `label`.
    pub fn inc(&self, label: L) {
        self.add(label, 1);
    }
    /// Adds `n` (negative to subtract, for gauges) for `label`.
    pub fn add(&self, label: L, n: i64) {
        self.values[label.index()].fetch_add(n, Relaxed);
    }
    /// The value for `label`.
    pub fn get(&self, label: L) -> i64 {
        self.values[label.index()].load(Relaxed)
    }
}

/// A histogram with fixed upper bounds, in an integer unit (`scale` units per exported
/// unit, e.g. microseconds exported as seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
    scale: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [u64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one value; negative values (clock skew) count as zero.
    pub fn observe(&self, v: i64) {
        let v = v.max(0) as u64;
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(v, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// Something that writes its metrics into the exposition.
pub trait Collect {
    /// Writes every metric, with `# HELP` and `# TYPE`.
    fn collect(&self, out: &mut Exposition);
}

/// The Prometheus text exposition format, being written.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// Every source's metrics, in order.
    pub fn render(sources: &[&dyn Collect]) -> String {
        let mut out = Exposition(String::with_capacity(8192));
        for s in sources {
            s.collect(&mut out);
        }
        out.0
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, c: &Counter) {
        self.header(name, "counter", help);
        let _ = writeln!(self.0, "{name} {}", c.get());
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, g: &Gauge) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {}", g.get());
    }

    /// A counter or gauge (`kind`) with one series per label value.
    pub fn family<L: Label>(&mut self, name: &str, kind: &str, help: &str, f: &Family<L>) {
        self.header(name, kind, help);
        for l in L::ALL {
            let _ = writeln!(
                self.0,
                "{name}{{{}=\"{}\"}} {}",
                L::KEY,
                l.label(),
                f.get(*l)
            );
        }
    }

    /// A counter with a single, fixed label value.
    pub fn counter_with(&mut self, name: &str, help: &str, label: (&str, &str), c: &Counter) {
        self.header(name, "counter", help);
        let _ = writeln!(self.0, "{name}{{{}=\"{}\"}} {}", label.0, label.1, c.get());
    }

    /// An info metric: one series with value 1 carrying `label`, or none when there is
    /// nothing to say (e.g. no broker node while disconnected).
    pub fn info(&mut self, name: &str, help: &str, label: Option<(&str, &str)>) {
        self.header(name, "gauge", help);
        if let Some((key, value)) = label {
            let _ = writeln!(self.0, "{name}{{{key}=\"{value}\"}} 1");
        }
    }

    /// A histogram: cumulative buckets, `+Inf`, sum and count.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        let mut cumulative = 0;
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += h.buckets[i].load(Relaxed);
            let le = *bound as f64 / h.scale;
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = h.count.load(Relaxed);
        let sum = h.sum.load(Relaxed) as f64 / h.scale;
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(self.0, "{name}_sum {sum}");
        let _ = writeln!(self.0, "{name}_count {count}");
    }
}

/// Installs the global log subscriber. Call once, from `main`; tests leave logging alone
/// or install their own.
pub fn init_logging(config: &Config) {
    use std::io::IsTerminal as _;
    let mut filter = tracing_subscriber::EnvFilter::new(&config.log);
    // The AMQP library logs each failed attempt two or three times over (the gateway logs
    // it once, with the node and a hint), and at trace its frames would carry the login.
    // Operators who name it in the filter get it.
    if !config.log.contains("lapin") {
        for quiet in ["lapin=off", "amq_protocol=off", "tcp_stream=off"] {
            if let Ok(directive) = quiet.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    // Colour codes only for a person at a terminal; in files, pipes and log collectors
    // they are noise around every field.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Most characters of outside text one log field shows: every valid interest pattern (255
/// bytes) and any sensible id or origin fits; beyond it, one request could make every line it
/// causes as long as its headers.
pub const LOG_TEXT_MAX_CHARS: usize = 256;

/// Text the gateway did not write (a client's query values, headers, in-band frames and
/// token claims, a publisher's ids and keys) on its way into a log field: see [`untrusted`].
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(&'a [u8]);

/// `text` made safe for a log line, whichever the format: control characters (newlines
/// above all, which would start a forged line in text logs), line separators and bidi
/// controls are shown as escapes, backslashes doubled so an escape cannot be faked, bytes
/// that are not UTF-8 shown as `\xNN`, and only the first [`LOG_TEXT_MAX_CHARS`] characters
/// kept. Use it as `field = %untrusted(value)` at every log site that carries such text.
pub fn untrusted<T: AsRef<[u8]> + ?Sized>(text: &T) -> Untrusted<'_> {
    Untrusted(text.as_ref())
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = 0;
        for chunk in self.0.utf8_chunks() {
            let bad = chunk.invalid().iter().map(|b| Err(*b));
            for piece in chunk.valid().chars().map(Ok).chain(bad) {
                if shown == LOG_TEXT_MAX_CHARS {
                    return write!(f, "...[{} bytes in all]", self.0.len());
                }
                shown += 1;
                match piece {
                    Ok('\\') => f.write_str("\\\\")?,
                    Ok(c) if c.is_control() => write!(f, "{}", c.escape_debug())?,
                    Ok(c) if is_layout_control(c) => write!(f, "{}", c.escape_unicode())?,
                    Ok(c) => f.write_char(c)?,
                    Err(byte) => write!(f, "\\x{byte:02x}")?,
                }
            }
        }
        Ok(())
    }
}

/// Characters that are not control characters but can still move or hide text in a log
/// viewer: line and paragraph separators, and bidirectional overrides and isolates.
fn is_layout_control(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::label_set! {
        /// A label set for the tests.
        enum Colour as "colour" {
            Red = "red",
            Green = "green",
        }
    }

    struct Sample {
        hits: Counter,
        by_colour: Family<Colour>,
        latency: Histogram,
    }

    impl Collect for Sample {
        fn collect(&self, out: &mut Exposition) {
            out.counter("t_hits_total", "Hits.", &self.hits);
            out.family("t_by_colour", "gauge", "By colour.", &self.by_colour);
            out.histogram("t_latency_seconds", "Latency.", &self.latency);
        }
    }

    #[test]
    fn label_sets_index_in_declaration_order() {
        for (i, c) in Colour::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        assert_eq!(Colour::Green.as_str(), "green");
    }

    #[test]
    fn renders_prometheus_text() {
        let s = Sample {
            hits: Counter::default(),
            by_colour: Family::default(),
            latency: Histogram::new(&[500, 2_500, 10_000_000], 1e6),
        };
        s.hits.add(3);
        s.by_colour.inc(Colour::Green);
        s.by_colour.add(Colour::Green, -1);
        s.by_colour.add(Colour::Red, 2);
        s.latency.observe(400);
        s.latency.observe(-5);
        s.latency.observe(1_500);
        s.latency.observe(60_000_000);
        let text = Exposition::render(&[&s]);
        for line in [
            "# TYPE t_hits_total counter",
            "t_hits_total 3",
            "t_by_colour{colour=\"red\"} 2",
            "t_by_colour{colour=\"green\"} 0",
            "t_latency_seconds_bucket{le=\"0.0005\"} 2",
            "t_latency_seconds_bucket{le=\"0.0025\"} 3",
            "t_latency_seconds_bucket{le=\"10\"} 3",
            "t_latency_seconds_bucket{le=\"+Inf\"} 4",
            "t_latency_seconds_count 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn an_info_metric_has_one_series_or_none() {
        let mut out = Exposition::default();
        out.info("t_node_info", "Where.", Some(("node", "mq-1:5671")));
        out.info("t_none_info", "Nowhere.", None);
        assert_eq!(
            out.0,
            "# HELP t_node_info Where.\n# TYPE t_node_info gauge\nt_node_info{node=\"mq-1:5671\"} 1\n\
             # HELP t_none_info Nowhere.\n# TYPE t_none_info gauge\n"
        );
    }

    #[test]
    fn untrusted_text_cannot_start_a_log_line_or_grow_it_without_bound() {
        let shown = |t: &[u8]| untrusted(t).to_string();
        let forged = "ok\n2099-01-01T00:00:00Z ERROR realtime_gateway::broker: forged";
        assert_eq!(
            shown(forged.as_bytes()),
            "ok\\n2099-01-01T00:00:00Z ERROR realtime_gateway::broker: forged"
        );
        assert_eq!(shown(b"a\rb\tc\x1b[31m\0"), "a\\rb\\tc\\u{1b}[31m\\0");
        assert_eq!(shown(b"a\\nb"), "a\\\\nb");
        assert_eq!(
            shown("x\u{2028}y\u{202e}z\u{85}".as_bytes()),
            "x\\u{2028}y\\u{202e}z\\u{85}"
        );
        assert_eq!(shown(b"caf\xc3\xa9 \xff!"), "caf\u{e9} \\xff!");
        assert_eq!(shown(b"tenant-1"), "tenant-1");
        let long = "y".repeat(LOG_TEXT_MAX_CHARS + 10);
        assert_eq!(
            shown(long.as_bytes()),
            format!(
                "{}...[{} bytes in all]",
                &long[..LOG_TEXT_MAX_CHARS],
                long.len()
            )
        );
        assert_eq!(
            shown("y".repeat(LOG_TEXT_MAX_CHARS).as_bytes()).len(),
            LOG_TEXT_MAX_CHARS
        );
        assert!(!shown("\n".repeat(10_000).as_bytes()).contains('\n'));
    }
}
