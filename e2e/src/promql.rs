//! What the reference deployment's dashboards and alert rules query, and what the
//! exporters they rely on export — for the test that no panel or alert names a metric
//! that does not exist.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use promql_parser::parser::Expr;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(1)
        .expect("e2e is one level down")
        .to_path_buf()
}

fn collect(expr: &Expr, out: &mut BTreeSet<String>) {
    match expr {
        Expr::Aggregate(a) => {
            collect(&a.expr, out);
            if let Some(p) = &a.param {
                collect(p, out);
            }
        }
        Expr::Unary(u) => collect(&u.expr, out),
        Expr::Binary(b) => {
            collect(&b.lhs, out);
            collect(&b.rhs, out);
        }
        Expr::Paren(p) => collect(&p.expr, out),
        Expr::Subquery(s) => collect(&s.expr, out),
        Expr::VectorSelector(vs) => out.extend(vs.name.clone()),
        Expr::MatrixSelector(ms) => out.extend(ms.vs.name.clone()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| collect(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The metric names `expr` selects (an unparsable expression is an error).
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let parsed = promql_parser::parser::parse(expr).map_err(|e| format!("{expr}: {e}"))?;
    let mut out = BTreeSet::new();
    collect(&parsed, &mut out);
    Ok(out)
}

/// Every PromQL expression of the dashboards and the alert rules, keyed by where it is
/// (`file: panel title` / `file: alert name`).
pub fn queries() -> Vec<(String, String)> {
    let root = repo_root();
    let mut out = Vec::new();
    let dir = root.join("deployments/compose/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("JSON");
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for p in d["panels"].as_array().expect("panels") {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("a target without expr");
                out.push((format!("{name}: {}", p["title"]), expr.to_owned()));
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(q) = v["query"]["query"].as_str() {
                // label_values(<selector>, label): the selector is PromQL.
                let inner = q
                    .strip_prefix("label_values(")
                    .and_then(|r| r.rsplit_once(','))
                    .map(|(sel, _)| sel.to_owned())
                    .unwrap_or_else(|| q.to_owned());
                out.push((format!("{name}: variable {}", v["name"]), inner));
            }
        }
    }
    // Alert rules: one `expr:` line per `- alert:` (kept on one line by convention; a
    // count mismatch fails here rather than skipping a rule).
    let rules = std::fs::read_to_string(root.join("deployments/compose/prometheus/alerts.yml"))
        .expect("alerts.yml");
    let mut alert = String::new();
    let (mut alerts, mut exprs) = (0, 0);
    for line in rules.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix("- alert:") {
            alert = a.trim().to_owned();
            alerts += 1;
        } else if let Some(e) = line.strip_prefix("expr:") {
            exprs += 1;
            out.push((format!("alerts.yml: {alert}"), e.trim().to_owned()));
        }
    }
    assert_eq!(
        alerts, exprs,
        "every alert has exactly one one-line `expr:`"
    );
    out
}

/// Every metric name the dashboards and alerts query, with where.
pub fn referenced() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in queries() {
        for name in metric_names(&expr).unwrap_or_else(|e| panic!("{place}: {e}")) {
            out.entry(name).or_default().push(place.clone());
        }
    }
    out
}

/// Metric names (with the value summed over series) in Prometheus text format.
pub fn parse_text(text: &str) -> HashMap<String, f64> {
    let mut out: HashMap<String, f64> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(name.to_owned()).or_default() += value;
    }
    out
}

/// The value of one series (`name{labels}` exactly as exported) in `{base}/metrics`,
/// as written there; `None` if there is no such series.
pub async fn series(base: &str, series: &str) -> Option<String> {
    let text = metrics_text(base).await?;
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// The body of `GET {base}/metrics`, if it answers.
async fn metrics_text(base: &str) -> Option<String> {
    reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// `GET {base}/metrics`, parsed with [`parse_text`].
pub async fn scrape(base: &str) -> HashMap<String, f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"))
        .text()
        .await
        .expect("body");
    parse_text(&text)
}

/// Where `scripts/prometheus-tools` (run by `make test`) unpacks Debian's Prometheus
/// tools and exporters.
pub fn tools_bin() -> PathBuf {
    crate::infra::tools_dir().join("prometheus/usr/bin")
}

/// Run exporter `bin` with `args` and `env` on a free port until it answers `/metrics`
/// with a line starting with `ready_metric`; returns the metric names it exports.
pub async fn exporter_metrics(
    bin: &str,
    args: &[String],
    env: &[(&str, &str)],
    ready_metric: &str,
) -> BTreeSet<String> {
    let path = tools_bin().join(bin);
    assert!(
        path.exists(),
        "{} is missing: `scripts/prometheus-tools` (part of `make test`) installs it",
        path.display()
    );
    let port = crate::free_port();
    let mut child = tokio::process::Command::new(&path)
        .args(args)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start exporter");
    let base = format!("http://127.0.0.1:{port}");
    let names = crate::eventually(
        &format!("{bin} to export {ready_metric}"),
        std::time::Duration::from_secs(20),
        || {
            let base = base.clone();
            async move {
                let text = metrics_text(&base).await?;
                text.lines()
                    .any(|l| l.starts_with(ready_metric) && l.ends_with(" 1"))
                    .then(|| parse_text(&text).into_keys().collect::<BTreeSet<_>>())
            }
        },
    )
    .await;
    let _ = child.kill().await;
    names
}

/// The names in `deployments/compose/prometheus/kafka-exporter-*.metrics`.
pub fn kafka_exporter_metrics() -> BTreeSet<String> {
    let dir = repo_root().join("deployments/compose/prometheus");
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("prometheus directory") {
        let p = e.expect("entry").path();
        let is_list = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("kafka-exporter-"));
        if is_list {
            let text = std::fs::read_to_string(&p).expect("read");
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_come_from_every_selector() {
        let names = super::metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=\"$service\"}[5m]))) / b + on() group_left c",
        )
        .unwrap();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["a_bucket", "b", "c"]
        );
        assert!(super::metric_names("rate(x[5m]").is_err());
    }
}
