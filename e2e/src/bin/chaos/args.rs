//! The command line: what to run, for how long, which faults.

use super::*;

pub(crate) const USAGE: &str = "\
chaos — the ordersys fault suite

  --clients N          concurrent clients (16)
  --orders N           stop placing orders after N in all (10000)
  --seconds S          stop placing orders after S seconds (600)
  --faults KINDS       what to kill: all | services | replicas | none, or a comma
                       list of user,order,payment,gateway,broker,redis,mariadb and,
                       with --replicas, order-2,payment-2 (all; `replicas`: one
                       replica of order or payment at a time)
  --replicas           two replicas each of the order and the payment service, both
                       behind the one gateway the clients use (ORDER_SERVICE_URL and
                       PAYMENT_SERVICE_URL list both)
  --assignment A       KAFKA_ASSIGNMENT of order and payment: group (the default) or
                       static (with --replicas each replica gets its own index:
                       static:0/2, static:1/2)
  --every A-B          seconds between faults, uniform in [A, B] (3-8)
  --down A-B           seconds a killed process stays down (0.2-2)
  --settle S           seconds allowed after the load for every order to end (120)
  --deadline S         PAYMENT_DEADLINE_SECS of the order service (30)
  --breaker-open S     BREAKER_OPEN_SECS of the gateway (30, the spec's figure)
  --initial N          INITIAL_BALANCE of a new account (2000000)
  --cancel-percent P   orders the client tries to cancel right after placing (10)
  --wait-s S           a client follows its order with `GET …?wait=Ss`, answered as
                       soon as the order is decided (5); 0: poll instead
  --poll-ms MS         with --wait-s 0, how often a client polls its order until it
                       ends (25); small values measure latency finely, at the cost of
                       GET load
  --warmup S           measure throughput, latency and CPU per order only after the
                       first S seconds of load (0); printed as the `bench:` line
  --slap N             after the load, N single-row INSERT commits from 16 clients
                       (mariadb-slap) on the same MariaDB: the raw commit rate (0: off)
  --embedded           load the one-process system (`ordersys`, SQLite + in-process
                       bus) instead of the separate services; no faults, and the
                       invariants checked through the REST API only
  --soak               staying power: every process's resident memory every 30 s
                       during the load, then the orders ended per minute and the
                       memory's first → peak → last in a `soak:` line (`make soak`)
  --keep               keep the work directory (logs, data) after a pass
  --compose PROJECT    attach to the running compose deployment PROJECT instead of
                       starting one (the gateway at its published port 8080, MySQL at
                       its container address with MYSQL_ROOT_PASSWORD from the
                       environment); faults are done to its containers, one after
                       another, as --compose-faults lists them; load stops after the
                       last one
  --compose-faults L   crash:SERVICE (kill -9 of the container's process from the host:
                       the restart policy brings it back) and partition:SERVICE (off
                       its network for --partition-secs), comma-separated
                       (crash:order,crash:payment,crash:kafka,crash:mysql,crash:redis,
                       partition:order,partition:payment)
  --partition-secs S   how long a partition lasts (12)

environment: TANSU_BIN (the broker binary), TANSU_STORAGE=sqlite (its log in a file
that survives its kills; needs a build with --features libsql), ORDERSYS_TOOLS
";

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) clients: usize,
    pub(crate) orders: u64,
    pub(crate) seconds: u64,
    pub(crate) faults: Vec<String>,
    pub(crate) every: (f64, f64),
    pub(crate) down: (f64, f64),
    pub(crate) settle: u64,
    pub(crate) deadline: u64,
    pub(crate) breaker_open: u64,
    pub(crate) initial: i64,
    pub(crate) cancel_percent: u32,
    pub(crate) poll_ms: u64,
    pub(crate) wait_s: u64,
    pub(crate) warmup: u64,
    pub(crate) slap: u64,
    pub(crate) embedded: bool,
    pub(crate) keep: bool,
    pub(crate) soak: bool,
    pub(crate) compose: Option<String>,
    pub(crate) compose_faults: Vec<Fault>,
    pub(crate) partition_secs: u64,
    pub(crate) replicas: bool,
    /// `KAFKA_ASSIGNMENT` of the consumers: `group` or `static`.
    pub(crate) assignment: String,
}

pub(crate) const SERVICES: [&str; 4] = ["user", "order", "payment", "gateway"];
pub(crate) const SERVERS: [&str; 3] = ["broker", "redis", "mariadb"];
/// The second replicas (`--replicas`).
pub(crate) const REPLICAS: [&str; 2] = ["order-2", "payment-2"];

pub(crate) fn range(s: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (a.parse::<f64>()?, b.parse::<f64>()?);
    anyhow::ensure!(a >= 0.0 && b >= a, "bad range {s}");
    Ok((a, b))
}

impl Args {
    pub(crate) fn parse() -> anyhow::Result<Self> {
        let mut a = Self {
            clients: 16,
            orders: 10_000,
            seconds: 600,
            faults: SERVICES
                .iter()
                .chain(SERVERS.iter())
                .map(|s| (*s).to_owned())
                .collect(),
            every: (3.0, 8.0),
            down: (0.2, 2.0),
            settle: 120,
            deadline: 30,
            breaker_open: 30,
            initial: 2_000_000,
            cancel_percent: 10,
            poll_ms: 25,
            wait_s: 5,
            warmup: 0,
            slap: 0,
            embedded: false,
            keep: false,
            soak: false,
            compose: None,
            compose_faults: [
                "crash:order",
                "crash:payment",
                "crash:kafka",
                "crash:mysql",
                "crash:redis",
                "partition:order",
                "partition:payment",
            ]
            .iter()
            .map(|f| Fault::parse(f))
            .collect::<anyhow::Result<_>>()?,
            partition_secs: 12,
            replicas: false,
            assignment: "group".into(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--clients" => a.clients = val()?.parse()?,
                "--orders" => a.orders = val()?.parse()?,
                "--seconds" => a.seconds = val()?.parse()?,
                "--faults" => {
                    let v = val()?;
                    a.faults = match v.as_str() {
                        "all" => SERVICES
                            .iter()
                            .chain(SERVERS.iter())
                            .map(|s| (*s).to_owned())
                            .collect(),
                        "services" => SERVICES.iter().map(|s| (*s).to_owned()).collect(),
                        "replicas" => ["order", "order-2", "payment", "payment-2"]
                            .map(str::to_owned)
                            .into(),
                        "none" => Vec::new(),
                        list => list.split(',').map(str::to_owned).collect(),
                    };
                    for f in &a.faults {
                        anyhow::ensure!(
                            SERVICES.contains(&f.as_str())
                                || SERVERS.contains(&f.as_str())
                                || REPLICAS.contains(&f.as_str()),
                            "unknown fault target {f}"
                        );
                    }
                }
                "--every" => a.every = range(&val()?)?,
                "--down" => a.down = range(&val()?)?,
                "--settle" => a.settle = val()?.parse()?,
                "--deadline" => a.deadline = val()?.parse()?,
                "--breaker-open" => a.breaker_open = val()?.parse()?,
                "--initial" => a.initial = val()?.parse()?,
                "--cancel-percent" => a.cancel_percent = val()?.parse()?,
                "--poll-ms" => a.poll_ms = val()?.parse()?,
                "--wait-s" => a.wait_s = val()?.parse::<u64>()?.min(9),
                "--warmup" => a.warmup = val()?.parse()?,
                "--slap" => a.slap = val()?.parse()?,
                "--embedded" => a.embedded = true,
                "--replicas" => a.replicas = true,
                "--assignment" => {
                    a.assignment = val()?;
                    anyhow::ensure!(
                        ["group", "static"].contains(&a.assignment.as_str()),
                        "--assignment is group or static"
                    );
                }
                "--keep" => a.keep = true,
                "--soak" => a.soak = true,
                "--compose" => a.compose = Some(val()?),
                "--compose-faults" => {
                    a.compose_faults = (val()?.split(',').filter(|f| !f.is_empty()))
                        .map(Fault::parse)
                        .collect::<anyhow::Result<_>>()?;
                }
                "--partition-secs" => a.partition_secs = val()?.parse()?,
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
            }
        }
        anyhow::ensure!(
            a.replicas || !a.faults.iter().any(|f| REPLICAS.contains(&f.as_str())),
            "order-2 and payment-2 exist with --replicas only"
        );
        if a.compose.is_some() {
            anyhow::ensure!(
                !a.embedded && a.slap == 0,
                "--compose runs alone: no --embedded, no --slap"
            );
        }
        if a.embedded {
            anyhow::ensure!(
                a.faults.is_empty(),
                "--embedded runs without faults: add --faults none"
            );
            anyhow::ensure!(
                a.slap == 0,
                "--slap needs the MariaDB of the separate services"
            );
        }
        Ok(a)
    }
}
