//! The load: concurrent REST clients placing, polling and cancelling orders, with a
//! record of every answer.

use super::*;

#[derive(Debug, Clone)]
pub(crate) struct OrderRec {
    pub(crate) id: String,
    pub(crate) total: i64,
    pub(crate) cancel_accepted: bool,
    pub(crate) placed: Instant,
    pub(crate) ended: Option<(Instant, String)>,
}

#[derive(Debug, Default)]
pub(crate) struct ClientRec {
    pub(crate) email: String,
    pub(crate) user_id: String,
    pub(crate) token: String,
    pub(crate) orders: Vec<OrderRec>,
    /// Keys answered with two different order ids.
    pub(crate) key_conflicts: u64,
    pub(crate) rejected: BTreeMap<u16, u64>,
}

pub(crate) struct Shared {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) stop: AtomicBool,
    pub(crate) placed: AtomicU64,
    pub(crate) limit: u64,
    pub(crate) cancel_percent: u32,
    pub(crate) poll: Duration,
    /// `?wait=Ns` to follow an order with (`None`: poll every `poll`).
    pub(crate) wait: Option<String>,
    /// Every request's answer as the client saw it: when, and whether it was refused
    /// (no answer, or a 5xx).
    pub(crate) answers: Mutex<Vec<(Instant, bool)>>,
}

pub(crate) async fn send(
    s: &Shared,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let mut rb = s
        .http
        .request(method, format!("{}{path}", s.base))
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(k) = key {
        rb = rb.header("Idempotency-Key", k);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let answer = async {
        let r = rb.send().await.ok()?;
        let status = r.status().as_u16();
        let text = r.text().await.ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
    .await;
    let refused = answer.as_ref().is_none_or(|(st, _)| *st >= 500);
    s.answers
        .lock()
        .expect("lock")
        .push((Instant::now(), refused));
    answer
}

/// Orders that took over 5 s from the first POST to the end (the services-only goal's
/// p99), counted by the first fault while they were under way, else the last one
/// before (`none`: no fault yet): which faults cost the most.
pub(crate) fn slow_after(
    orders: &[OrderRec],
    faults: &[(Instant, String)],
) -> BTreeMap<String, u64> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for o in orders {
        let end = o.ended.as_ref().map(|(t, _)| *t);
        if end.is_none_or(|t| t - o.placed > Duration::from_secs(5)) {
            // The first fault while it was under way, else the last one before it.
            let during = faults
                .iter()
                .find(|(t, _)| *t >= o.placed && end.is_none_or(|e| *t <= e));
            let last = during
                .or_else(|| faults.iter().rev().find(|(t, _)| *t <= o.placed))
                .map_or("none", |(_, name)| name.as_str());
            *by.entry(last.to_owned()).or_default() += 1;
        }
    }
    by
}

/// Availability as the clients saw it: the share of requests refused (no answer or a
/// 5xx), and per fault the longest run of refusals in a row — from the first refused
/// answer to the next one that was not — between that fault and the next.
pub(crate) fn availability(answers: &[(Instant, bool)], faults: &[Instant]) -> String {
    let mut answers = answers.to_vec();
    answers.sort_by_key(|(t, _)| *t);
    let refused = answers.iter().filter(|(_, r)| *r).count();
    let share = 100.0 * refused as f64 / answers.len().max(1) as f64;
    let mut windows: Vec<Duration> = Vec::new();
    for (i, start) in faults.iter().enumerate() {
        let end = faults.get(i + 1).copied();
        let mut longest = Duration::ZERO;
        let mut run: Option<Instant> = None;
        for (t, r) in answers
            .iter()
            .filter(|(t, _)| t >= start && end.is_none_or(|e| *t < e))
        {
            match (run, r) {
                (None, true) => run = Some(*t),
                (Some(first), false) => {
                    longest = longest.max(*t - first);
                    run = None;
                }
                (Some(first), true) => longest = longest.max(*t - first),
                (None, false) => {}
            }
        }
        windows.push(longest);
    }
    windows.sort();
    let fmt =
        |d: Option<&Duration>| format!("{:.1}s", d.copied().unwrap_or_default().as_secs_f64());
    format!(
        "requests={} refused={refused} refused-share={share:.2}% refusal-window-p50={} refusal-window-max={}",
        answers.len(),
        fmt(windows.get(windows.len() / 2)),
        fmt(windows.last()),
    )
}

/// Retry until an answer other than "try again" (no answer, 5xx, 429) comes, or
/// `give_up` passes.
pub(crate) async fn answered(
    s: &Shared,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<&Value>,
    give_up: Instant,
) -> Option<(u16, Value)> {
    let mut pause = Duration::from_millis(50);
    loop {
        match send(s, method.clone(), path, token, key, body).await {
            Some((st, v)) if st < 500 && st != 429 => return Some((st, v)),
            _ if Instant::now() > give_up => return None,
            _ => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

pub(crate) fn terminal(status: &str, cancel_accepted: bool) -> bool {
    if cancel_accepted {
        status == "CANCELLED"
    } else {
        status == "CONFIRMED" || status == "CANCELLED"
    }
}

pub(crate) async fn client(s: Arc<Shared>, rec: Arc<Mutex<ClientRec>>) {
    let forever = Instant::now() + Duration::from_secs(24 * 3600);
    let email = format!("chaos-{}@example.com", Uuid::new_v4().simple());
    let creds = json!({ "email": email, "password": "chaos-password" });
    let reg = answered(
        &s,
        reqwest::Method::POST,
        "/api/v1/auth/register",
        None,
        None,
        Some(&creds),
        forever,
    )
    .await;
    let Some((201 | 409, body)) = reg else {
        log(format!("register failed: {reg:?}"));
        return;
    };
    let mut user_id = body["user_id"].as_str().unwrap_or("").to_owned();
    let token = loop {
        match answered(
            &s,
            reqwest::Method::POST,
            "/api/v1/auth/login",
            None,
            None,
            Some(&creds),
            forever,
        )
        .await
        {
            Some((200, b)) => break b["access_token"].as_str().unwrap_or("").to_owned(),
            other => {
                log(format!("login: {other:?}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    if user_id.is_empty() {
        if let Some((200, me)) = answered(
            &s,
            reqwest::Method::GET,
            "/api/v1/auth/me",
            Some(&token),
            None,
            None,
            forever,
        )
        .await
        {
            user_id = me["user_id"].as_str().unwrap_or("").to_owned();
        }
    }
    {
        let mut r = rec.lock().expect("lock");
        r.email = email;
        r.user_id = user_id;
        r.token = token.clone();
    }
    while !s.stop.load(Ordering::Relaxed) {
        if s.placed.fetch_add(1, Ordering::Relaxed) >= s.limit {
            break;
        }
        let (items, total) = {
            let mut rng = rand::rng();
            let n = rng.random_range(1..=3);
            let mut items = Vec::new();
            let mut total = 0i64;
            for i in 0..n {
                let q: i64 = rng.random_range(1..=3);
                let p: i64 = rng.random_range(100..=2_000);
                total += q * p;
                items.push(
                    json!({"product_id": format!("sku-{i}"), "quantity": q, "unit_price": p}),
                );
            }
            (items, total)
        };
        let key = Uuid::new_v4().to_string();
        let body = json!({ "items": items, "currency": "USD" });
        let placed = Instant::now();
        let mut first_id: Option<String> = None;
        let mut conflict = false;
        // Answered = 201; everything else but a 4xx is retried with the same key, and a
        // second answer must name the same order.
        let created = loop {
            match answered(
                &s,
                reqwest::Method::POST,
                "/api/v1/orders",
                Some(&token),
                Some(&key),
                Some(&body),
                forever,
            )
            .await
            {
                Some((201, o)) => {
                    let id = o["order_id"].as_str().unwrap_or("").to_owned();
                    // Ask once more with the same key now and then: must be the same order.
                    if first_id.is_none() && rand::rng().random_ratio(1, 20) {
                        first_id = Some(id);
                        continue;
                    }
                    if let Some(f) = &first_id {
                        conflict |= *f != id;
                    }
                    break Some((id, o));
                }
                // The same key still being processed: ask again.
                Some((409, _)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Some((st, _)) => {
                    *rec.lock().expect("lock").rejected.entry(st).or_default() += 1;
                    break None;
                }
                None => break None,
            }
        };
        let Some((id, o)) = created else { continue };
        let total_answered = o["total_amount"].as_i64().unwrap_or(-1);
        if total_answered != total {
            log(format!(
                "order {id}: total {total_answered} answered, {total} sent"
            ));
        }
        let mut cancel_accepted = false;
        if rand::rng().random_ratio(s.cancel_percent.min(100), 100) {
            if let Some((st, _)) = answered(
                &s,
                reqwest::Method::POST,
                &format!("/api/v1/orders/{id}/cancel"),
                Some(&token),
                None,
                None,
                forever,
            )
            .await
            {
                cancel_accepted = st == 202;
            }
        }
        {
            let mut r = rec.lock().expect("lock");
            r.key_conflicts += u64::from(conflict);
            r.orders.push(OrderRec {
                id: id.clone(),
                total,
                cancel_accepted,
                placed,
                ended: None,
            });
        }
        // Follow it until it ends (bounded: the final check follows the rest).
        let give_up = Instant::now() + Duration::from_secs(60);
        let wait = s.wait.as_deref().unwrap_or("");
        while Instant::now() < give_up && !s.stop.load(Ordering::Relaxed) {
            let mut waited = false;
            if let Some((200, o)) = send(
                &s,
                reqwest::Method::GET,
                &format!("/api/v1/orders/{id}{wait}"),
                Some(&token),
                None,
                None,
            )
            .await
            {
                let st = o["status"].as_str().unwrap_or("");
                // Still PENDING after a wait: the gateway waited; ask again at once.
                waited = !wait.is_empty() && st == "PENDING";
                if terminal(st, cancel_accepted) {
                    let mut r = rec.lock().expect("lock");
                    if let Some(last) = r.orders.last_mut() {
                        last.ended = Some((Instant::now(), st.to_owned()));
                    }
                    break;
                }
            }
            if !waited {
                tokio::time::sleep(s.poll).await;
            }
        }
    }
}

pub(crate) fn pick<T: Copy>(v: &[T]) -> T {
    v[rand::rng().random_range(0..v.len())]
}

pub(crate) fn uniform((a, b): (f64, f64)) -> Duration {
    Duration::from_secs_f64(if b > a {
        rand::rng().random_range(a..=b)
    } else {
        a
    })
}
