//! The fault suite against a running compose deployment (`--compose PROJECT`): the same
//! load and invariants, with faults done to containers. A crash is `kill -9` of the
//! container's main process from the host — what the restart policy is for; it must
//! bring the container back to healthy on its own. A partition disconnects the
//! container from its network for a while, then reconnects it under its service name.
//! The invariants are checked on the deployment's MySQL (reached at the container's
//! address, with `MYSQL_ROOT_PASSWORD` from the environment).

use super::*;

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    Crash(String),
    Partition(String),
}

impl Fault {
    /// `crash:SERVICE` or `partition:SERVICE`.
    pub(crate) fn parse(s: &str) -> anyhow::Result<Self> {
        match s.split_once(':') {
            Some(("crash", svc)) if !svc.is_empty() => Ok(Self::Crash(svc.to_owned())),
            Some(("partition", svc)) if !svc.is_empty() => Ok(Self::Partition(svc.to_owned())),
            _ => anyhow::bail!("a compose fault is crash:SERVICE or partition:SERVICE, not {s}"),
        }
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Self::Crash(s) => format!("crash:{s}"),
            Self::Partition(s) => format!("partition:{s}"),
        }
    }
}

/// A compose project's containers, by service name.
pub(crate) struct Compose {
    project: String,
}

async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .context("running docker")?;
    anyhow::ensure!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Compose {
    pub(crate) fn new(project: &str) -> Self {
        Self {
            project: project.to_owned(),
        }
    }

    /// The container of `service` (the first, if scaled).
    pub(crate) async fn container(&self, service: &str) -> anyhow::Result<String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let svc = format!("label=com.docker.compose.service={service}");
        let ids = docker(&["ps", "-aq", "--filter", &project, "--filter", &svc]).await?;
        ids.lines()
            .next()
            .map(str::to_owned)
            .with_context(|| format!("no container of {service} in project {}", self.project))
    }

    async fn inspect(&self, id: &str, format: &str) -> anyhow::Result<String> {
        docker(&["inspect", "-f", format, id]).await
    }

    /// `http://127.0.0.1:PORT` of `service`'s published `port`.
    pub(crate) async fn published(&self, service: &str, port: u16) -> anyhow::Result<String> {
        let id = self.container(service).await?;
        let mapped = docker(&["port", &id, &format!("{port}/tcp")]).await?;
        let host_port = mapped
            .lines()
            .find_map(|l| l.rsplit_once(':').map(|(_, p)| p.to_owned()))
            .with_context(|| format!("{service}:{port} is not published"))?;
        Ok(format!("http://127.0.0.1:{host_port}"))
    }

    /// The MySQL server URL, at the mysql container's address.
    pub(crate) async fn mysql_url(&self) -> anyhow::Result<String> {
        let id = self.container("mysql").await?;
        let ip = self
            .inspect(
                &id,
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            )
            .await?;
        let ip = ip
            .split_whitespace()
            .next()
            .context("mysql has no address")?;
        let password = std::env::var("MYSQL_ROOT_PASSWORD")
            .context("MYSQL_ROOT_PASSWORD (the deployment's, from its .env) is not set")?;
        Ok(format!("mysql://root:{password}@{ip}:3306"))
    }

    /// Running, and healthy if it has a health check.
    async fn healthy(&self, id: &str) -> anyhow::Result<bool> {
        let state = self
            .inspect(
                id,
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            )
            .await?;
        Ok(matches!(
            state.split_whitespace().collect::<Vec<_>>()[..],
            ["running", "healthy" | "none"]
        ))
    }

    /// Wait until `service` is running and healthy again.
    pub(crate) async fn wait_healthy(&self, service: &str, within: Duration) -> anyhow::Result<()> {
        let id = self.container(service).await?;
        let deadline = Instant::now() + within;
        while !self.healthy(&id).await? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{service} is not healthy again within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// `kill -9` of `service`'s main process from the host; then wait until the restart
    /// policy has brought it back to healthy (the time it took).
    pub(crate) async fn crash(&self, service: &str) -> anyhow::Result<Duration> {
        let id = self.container(service).await?;
        let restarts: u64 = self.inspect(&id, "{{.RestartCount}}").await?.parse()?;
        let pid = self.inspect(&id, "{{.State.Pid}}").await?;
        anyhow::ensure!(pid != "0", "{service} is not running");
        let t0 = Instant::now();
        let status = tokio::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -9 {pid} ({service}) failed");
        let deadline = t0 + Duration::from_secs(180);
        loop {
            let now: u64 = self.inspect(&id, "{{.RestartCount}}").await?.parse()?;
            if now > restarts && self.healthy(&id).await? {
                return Ok(t0.elapsed());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{service} was not restarted to healthy within 180 s (restarts {restarts} → {now})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Disconnect `service` from its network for `down`, then connect it again under
    /// its service name; wait until it is healthy.
    pub(crate) async fn partition(&self, service: &str, down: Duration) -> anyhow::Result<()> {
        let id = self.container(service).await?;
        let nets = self
            .inspect(
                &id,
                "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            )
            .await?;
        let net = nets
            .split_whitespace()
            .next()
            .with_context(|| format!("{service} is on no network"))?
            .to_owned();
        docker(&["network", "disconnect", &net, &id]).await?;
        tokio::time::sleep(down).await;
        docker(&["network", "connect", "--alias", service, &net, &id]).await?;
        self.wait_healthy(service, Duration::from_secs(120)).await
    }

    /// Do `fault`; the time until the target was healthy again.
    pub(crate) async fn inflict(
        &self,
        fault: &Fault,
        partition: Duration,
    ) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        match fault {
            Fault::Crash(s) => self.crash(s).await,
            Fault::Partition(s) => self.partition(s, partition).await.map(|()| t0.elapsed()),
        }
    }
}
