//! `ordersys-admin`: the operator tools of the order service from a shell (see
//! `ordersys_order::operator`).
//!
//! ```text
//! ordersys-admin sagas list [--status S] [--older-than 10m] [--overdue] [--limit N]
//! ordersys-admin sagas show <saga-id> [--diagram]
//! ordersys-admin sagas compensate <saga-id> [--reason TEXT]
//! ordersys-admin dlq list [--limit N]
//! ordersys-admin dlq show <offset> [--partition P | --service S]
//! ordersys-admin dlq replay <offset> [--partition P | --service S]
//! ```
//!
//! `--url` (or `ORDERSYS_ADMIN_URL`, default `http://127.0.0.1:8085`): the order
//! service's operator port (`OPERATOR_ADDR`); the token from `ORDERSYS_ADMIN_TOKEN` (or `ADMIN_TOKEN`). Prints
//! the JSON answer; exits 1 on an error answer, 2 on bad usage.

use std::process::ExitCode;

const USAGE: &str = "usage:
  ordersys-admin [--url URL] sagas list [--status STARTED|RUNNING|COMPENSATING|COMPLETED|FAILED]
                                        [--older-than DURATION] [--overdue] [--limit N]
  ordersys-admin [--url URL] sagas show SAGA_ID [--diagram]   (--diagram: the saga's
                             definition as a Mermaid flowchart, where it stands marked)
  ordersys-admin [--url URL] sagas compensate SAGA_ID [--reason TEXT]
  ordersys-admin [--url URL] dlq list [--limit N]
  ordersys-admin [--url URL] dlq show OFFSET [--partition P | --service order|payment]
  ordersys-admin [--url URL] dlq replay OFFSET [--partition P | --service order|payment]
environment: ORDERSYS_ADMIN_URL (default http://127.0.0.1:8085), ORDERSYS_ADMIN_TOKEN or ADMIN_TOKEN";

struct Args {
    words: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

fn parse(raw: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut words = Vec::new();
    let mut flags = Vec::new();
    let mut it = raw.peekable();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            let takes_value = !matches!(name, "overdue" | "help" | "diagram");
            let value = if takes_value {
                Some(it.next().ok_or(format!("--{name} needs a value"))?)
            } else {
                None
            };
            flags.push((name.to_owned(), value));
        } else {
            words.push(a);
        }
    }
    Ok(Args { words, flags })
}

impl Args {
    fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }
}

enum Call {
    Get(String),
    Post(String, serde_json::Value),
}

fn call_of(args: &Args) -> Result<Call, String> {
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    Ok(match words.as_slice() {
        ["sagas", "list"] => {
            let mut q = Vec::new();
            if let Some(s) = args.flag("status") {
                q.push(format!("status={s}"));
            }
            if let Some(d) = args.flag("older-than") {
                let d = humantime::parse_duration(d).map_err(|e| format!("--older-than: {e}"))?;
                q.push(format!("older_than_secs={}", d.as_secs()));
            }
            if args.has("overdue") {
                q.push("overdue=true".into());
            }
            if let Some(n) = args.flag("limit") {
                q.push(format!(
                    "limit={}",
                    n.parse::<usize>().map_err(|e| format!("--limit: {e}"))?
                ));
            }
            Call::Get(format!("/admin/sagas?{}", q.join("&")))
        }
        ["sagas", "show", id] => Call::Get(format!("/admin/sagas/{id}")),
        ["sagas", "compensate", id] => Call::Post(
            format!("/admin/sagas/{id}/compensate"),
            serde_json::json!({ "reason": args.flag("reason").unwrap_or("") }),
        ),
        ["dlq", "list"] => Call::Get(match args.flag("limit") {
            Some(n) => format!(
                "/admin/dlq?limit={}",
                n.parse::<usize>().map_err(|e| format!("--limit: {e}"))?
            ),
            None => "/admin/dlq".into(),
        }),
        ["dlq", "show", offset] => {
            let offset = offset.parse::<i64>().map_err(|e| format!("offset: {e}"))?;
            let mut q = Vec::new();
            if let Some(p) = args.flag("partition") {
                let p = p.parse::<i32>().map_err(|e| format!("--partition: {e}"))?;
                q.push(format!("partition={p}"));
            }
            if let Some(s) = args.flag("service") {
                if !matches!(s, "order" | "payment") {
                    return Err("--service: order or payment".into());
                }
                q.push(format!("service={s}"));
            }
            Call::Get(format!("/admin/dlq/{offset}?{}", q.join("&")))
        }
        ["dlq", "replay", offset] => {
            let mut body = serde_json::json!({
                "offset": offset.parse::<i64>().map_err(|e| format!("offset: {e}"))?,
            });
            // Without --partition the service finds the offset in any partition (and
            // asks for one when several have it).
            if let Some(p) = args.flag("partition") {
                body["partition"] = p
                    .parse::<i32>()
                    .map_err(|e| format!("--partition: {e}"))?
                    .into();
            }
            // Embedded, the services' own files: the same for the service.
            if let Some(s) = args.flag("service") {
                body["service"] = s.into();
            }
            Call::Post("/admin/dlq/replay".into(), body)
        }
        _ => return Err("unknown command".into()),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) if !a.has("help") && !a.words.is_empty() => a,
        Ok(_) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let call = match call_of(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let base = args
        .flag("url")
        .map(str::to_owned)
        .or_else(|| std::env::var("ORDERSYS_ADMIN_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8085".into());
    let base = base.trim_end_matches('/');
    let token = std::env::var("ORDERSYS_ADMIN_TOKEN")
        .or_else(|_| std::env::var("ADMIN_TOKEN"))
        .unwrap_or_default();
    let client = reqwest::Client::new();
    let request = match call {
        Call::Get(path) => client.get(format!("{base}{path}")),
        Call::Post(path, body) => client.post(format!("{base}{path}")).json(&body),
    };
    let response = match request.bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ordersys-admin: {base}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let answer = serde_json::from_str::<serde_json::Value>(&text).ok();
    let diagram = answer
        .as_ref()
        .and_then(|v| v["diagram"].as_str().map(str::to_owned));
    let pretty = answer
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() && args.has("diagram") {
        let Some(diagram) = diagram else {
            eprintln!("ordersys-admin: the answer has no diagram (unknown saga type?)\n{pretty}");
            return ExitCode::FAILURE;
        };
        print!("{diagram}");
        ExitCode::SUCCESS
    } else if status.is_success() {
        println!("{pretty}");
        ExitCode::SUCCESS
    } else {
        eprintln!("ordersys-admin: {status}\n{pretty}");
        ExitCode::FAILURE
    }
}
