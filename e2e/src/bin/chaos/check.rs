//! The invariants, checked after the run through the REST API and with SQL.

use super::*;

pub(crate) struct Summary {
    pub(crate) orders: usize,
    pub(crate) confirmed: usize,
    pub(crate) cancelled: usize,
    pub(crate) stuck: Vec<String>,
    pub(crate) lost: Vec<String>,
    pub(crate) double_charged: Vec<String>,
    pub(crate) unpaid: Vec<String>,
    pub(crate) phantom: Vec<String>,
    pub(crate) balance_wrong: Vec<String>,
    pub(crate) outbox_unsent: i64,
    pub(crate) sagas_open: i64,
    pub(crate) dead_letters: Vec<String>,
}

impl Summary {
    pub(crate) fn failed(&self) -> bool {
        !(self.stuck.is_empty()
            && self.lost.is_empty()
            && self.double_charged.is_empty()
            && self.unpaid.is_empty()
            && self.phantom.is_empty()
            && self.balance_wrong.is_empty()
            && self.outbox_unsent == 0
            && self.sagas_open == 0
            && self.dead_letters.is_empty())
    }
}

pub(crate) async fn mysql(url: &str) -> anyhow::Result<sqlx::MySqlConnection> {
    Ok(sqlx::mysql::MySqlConnectOptions::from_str(url)?
        .connect()
        .await?)
}

pub(crate) fn uuid_of(bytes: &[u8]) -> String {
    Uuid::from_slice(bytes)
        .map(|u| u.to_string())
        .unwrap_or_default()
}

/// Wait for the end state, then check every invariant.
pub(crate) async fn check(
    args: &Args,
    s: &Shared,
    clients: &[Arc<Mutex<ClientRec>>],
    dep: &Deployment,
    logs: &[PathBuf],
) -> anyhow::Result<(Summary, Instant)> {
    let settle_start = Instant::now();
    let settle_until = settle_start + Duration::from_secs(args.settle);
    // 1. Every order the clients know ends (as the REST API shows it).
    let mut final_status: HashMap<String, String> = HashMap::new();
    loop {
        let mut open = 0;
        for c in clients {
            let (token, orders) = {
                let r = c.lock().expect("lock");
                (
                    r.token.clone(),
                    r.orders
                        .iter()
                        .map(|o| (o.id.clone(), o.cancel_accepted))
                        .collect::<Vec<_>>(),
                )
            };
            for (id, cancel) in orders {
                if final_status.get(&id).is_some_and(|st| terminal(st, cancel)) {
                    continue;
                }
                match send(
                    s,
                    reqwest::Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    Some(&token),
                    None,
                    None,
                )
                .await
                {
                    Some((200, o)) => {
                        let st = o["status"].as_str().unwrap_or("").to_owned();
                        if !terminal(&st, cancel) {
                            open += 1;
                        }
                        final_status.insert(id, st);
                    }
                    Some((404, _)) => {
                        final_status.insert(id, "NOT_FOUND".into());
                    }
                    _ => open += 1,
                }
            }
        }
        if open == 0 || Instant::now() > settle_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ended_at = Instant::now();
    let Some((order_db, pay_db)) = dep.databases() else {
        // Embedded: what the REST API shows is all there is to check from outside.
        let count = |want: &str| final_status.values().filter(|s| *s == want).count();
        let stuck: Vec<String> = orders_of(clients)
            .into_iter()
            .filter(|o| {
                !final_status
                    .get(&o.id)
                    .is_some_and(|st| terminal(st, o.cancel_accepted))
            })
            .map(|o| o.id)
            .collect();
        let summary = Summary {
            orders: final_status.len(),
            confirmed: count("CONFIRMED"),
            cancelled: count("CANCELLED"),
            stuck,
            lost: Vec::new(),
            double_charged: Vec::new(),
            unpaid: Vec::new(),
            phantom: Vec::new(),
            balance_wrong: Vec::new(),
            outbox_unsent: 0,
            sagas_open: 0,
            dead_letters: Vec::new(),
        };
        let _ = logs;
        return Ok((summary, all_ended_at));
    };

    // 2. The outboxes drain; the sagas end.
    let (mut outbox_unsent, mut sagas_open);
    loop {
        let mut o = mysql(&order_db).await?;
        let mut p = mysql(&pay_db).await?;
        // Unsent: not marked by a claims relay, and past a streaming relay's position.
        let q = "SELECT COUNT(*) FROM outbox_messages WHERE sent_at IS NULL AND seq > \
                 COALESCE((SELECT MAX(position) FROM outbox_relay_position), 0)";
        outbox_unsent = sqlx::query_scalar::<_, i64>(q).fetch_one(&mut o).await?
            + sqlx::query_scalar::<_, i64>(q).fetch_one(&mut p).await?;
        sagas_open = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM saga_instances WHERE status NOT IN ('COMPLETED', 'FAILED')",
        )
        .fetch_one(&mut o)
        .await?;
        let _ = o.close().await;
        let _ = p.close().await;
        if (outbox_unsent == 0 && sagas_open == 0) || Instant::now() > settle_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 3. SQL: the order rows and the payment rows.
    let mut o = mysql(&order_db).await?;
    let mut p = mysql(&pay_db).await?;
    let rows = sqlx::query("SELECT id, user_id, status, total_amount FROM orders")
        .fetch_all(&mut o)
        .await?;
    let mut sql_orders: HashMap<String, (String, String, i64)> = HashMap::new();
    for r in rows {
        let id: Vec<u8> = r.get(0);
        let user: Vec<u8> = r.get(1);
        sql_orders.insert(uuid_of(&id), (uuid_of(&user), r.get(2), r.get(3)));
    }
    let rows = sqlx::query("SELECT order_id, status, amount FROM payments")
        .fetch_all(&mut p)
        .await?;
    let mut payments: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for r in rows {
        let id: Vec<u8> = r.get(0);
        payments
            .entry(uuid_of(&id))
            .or_default()
            .push((r.get(1), r.get(2)));
    }
    let _ = o.close().await;
    let _ = p.close().await;

    let mut sum = Summary {
        orders: 0,
        confirmed: 0,
        cancelled: 0,
        stuck: Vec::new(),
        lost: Vec::new(),
        double_charged: Vec::new(),
        unpaid: Vec::new(),
        phantom: Vec::new(),
        balance_wrong: Vec::new(),
        outbox_unsent,
        sagas_open,
        dead_letters: Vec::new(),
    };
    let mut known: HashSet<String> = HashSet::new();
    for c in clients {
        let (token, user_id, orders, key_conflicts) = {
            let r = c.lock().expect("lock");
            (
                r.token.clone(),
                r.user_id.clone(),
                r.orders.clone(),
                r.key_conflicts,
            )
        };
        if token.is_empty() {
            continue;
        }
        for k in 0..key_conflicts {
            sum.phantom.push(format!(
                "user {user_id}: an Idempotency-Key answered with two orders ({k})"
            ));
        }
        let mine: HashSet<String> = orders.iter().map(|o| o.id.clone()).collect();
        known.extend(mine.iter().cloned());
        let mut confirmed_total = 0i64;
        for ord in &orders {
            sum.orders += 1;
            let st = final_status
                .get(&ord.id)
                .map(String::as_str)
                .unwrap_or("UNKNOWN");
            match st {
                "CONFIRMED" => sum.confirmed += 1,
                "CANCELLED" => sum.cancelled += 1,
                _ => {}
            }
            if st == "NOT_FOUND" || !sql_orders.contains_key(&ord.id) {
                sum.lost.push(format!("{} ({st})", ord.id));
                continue;
            }
            if !terminal(st, ord.cancel_accepted) {
                sum.stuck.push(format!(
                    "{} ({st}, cancel accepted: {})",
                    ord.id, ord.cancel_accepted
                ));
            }
            let pay = payments.get(&ord.id).cloned().unwrap_or_default();
            let debited: Vec<&(String, i64)> = pay.iter().filter(|(s, _)| s == "DEBITED").collect();
            match st {
                "CONFIRMED" => {
                    confirmed_total += ord.total;
                    if debited.len() != 1 || debited[0].1 != ord.total || pay.len() != 1 {
                        if debited.is_empty() {
                            sum.unpaid
                                .push(format!("{} CONFIRMED with payments {pay:?}", ord.id));
                        } else {
                            sum.double_charged
                                .push(format!("{} CONFIRMED with payments {pay:?}", ord.id));
                        }
                    }
                }
                "CANCELLED" if !debited.is_empty() => {
                    sum.double_charged
                        .push(format!("{} CANCELLED with payments {pay:?}", ord.id));
                }
                _ => {}
            }
        }
        // The user's list holds exactly the client's orders.
        let mut listed: HashSet<String> = HashSet::new();
        let mut cursor = String::new();
        loop {
            let path = if cursor.is_empty() {
                "/api/v1/orders?limit=100".to_owned()
            } else {
                format!("/api/v1/orders?limit=100&cursor={cursor}")
            };
            let Some((200, page)) = answered(
                s,
                reqwest::Method::GET,
                &path,
                Some(&token),
                None,
                None,
                Instant::now() + Duration::from_secs(30),
            )
            .await
            else {
                anyhow::bail!("listing orders failed");
            };
            for o in page["orders"].as_array().into_iter().flatten() {
                listed.insert(o["order_id"].as_str().unwrap_or("").to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = c.to_owned(),
                _ => break,
            }
        }
        for id in listed.difference(&mine) {
            sum.phantom.push(format!(
                "{id} listed for user {user_id}, never created by its client"
            ));
        }
        for id in mine.difference(&listed) {
            sum.lost
                .push(format!("{id} missing from the list of user {user_id}"));
        }
        // The wallet: initial balance minus the confirmed orders.
        if let Some((200, w)) = answered(
            s,
            reqwest::Method::GET,
            "/api/v1/wallet",
            Some(&token),
            None,
            None,
            Instant::now() + Duration::from_secs(30),
        )
        .await
        {
            let balance = w["balance"].as_i64().unwrap_or(i64::MIN);
            let expected = args.initial - confirmed_total;
            if balance != expected {
                sum.balance_wrong.push(format!(
                    "user {user_id}: balance {balance}, expected {expected}"
                ));
            }
        } else {
            sum.balance_wrong
                .push(format!("user {user_id}: wallet not answered"));
        }
    }
    // An order of one of our users that no client created. (Orders of other users —
    // a deployment's own smoke test, say — are not ours to judge.)
    let our_users: HashSet<String> = clients
        .iter()
        .map(|c| c.lock().expect("lock").user_id.clone())
        .collect();
    for (id, (user, _, _)) in &sql_orders {
        if our_users.contains(user) && !known.contains(id) {
            sum.phantom.push(format!(
                "{id} of user {user} in the orders table, never created by a client"
            ));
        }
    }
    // Dead letters: none is expected from valid orders; each one is shown with its reason.
    for path in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("dead-letter")) {
            sum.dead_letters.push(line.chars().take(400).collect());
        }
    }
    Ok((sum, all_ended_at))
}

/// Every order of every client (a copy).
pub(crate) fn orders_of(clients: &[Arc<Mutex<ClientRec>>]) -> Vec<OrderRec> {
    clients
        .iter()
        .flat_map(|c| c.lock().expect("lock").orders.clone())
        .collect()
}
