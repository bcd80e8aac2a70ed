// The whole REST flow through a TypeScript client generated from the OpenAPI document
// (openapi-typescript types + openapi-fetch), compiled with `tsc --strict`: every
// status, enum value and header typed, no cast. Usage: node flow.js BASE_URL
// (scripts/api-clients runs it).
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Order = components["schemas"]["OrderBody"];
type OrderStatus = components["schemas"]["OrderStatus"];
type CreateBody = components["schemas"]["CreateBody"];

function check(ok: boolean, what: string): asserts ok {
  if (!ok) throw new Error(`failed: ${what}`);
}

const base = process.argv[2] ?? "http://127.0.0.1:8080";
const api = createClient<paths>({ baseUrl: base });
let token = "";
const bearer: Middleware = {
  onRequest({ request }) {
    if (token) request.headers.set("Authorization", `Bearer ${token}`);
    return request;
  },
};
api.use(bearer);

const order = (unit_price: number, quantity = 1): CreateBody => ({
  items: [{ product_id: "book", quantity, unit_price }],
  currency: "USD",
});

async function wait(id: string, want: OrderStatus): Promise<Order> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { data } = await api.GET("/api/v1/orders/{id}", { params: { path: { id } } });
    check(data !== undefined, `GET order ${id}`);
    if (data.status === want) return data;
    check(Date.now() < deadline, `order ${id} stayed ${data.status}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const creds = { email: `ts-${crypto.randomUUID()}@example.com`, password: "typescript-password-1" };
const reg = await api.POST("/api/v1/auth/register", { body: creds });
check(reg.response.status === 201 && reg.data?.email === creds.email, "register");
const dup = await api.POST("/api/v1/auth/register", { body: creds });
check(dup.error?.error.code === "conflict", "register twice");
const login = await api.POST("/api/v1/auth/login", { body: creds });
check(login.data !== undefined && login.data.token_type === "Bearer", "login");
token = login.data.access_token;
const me = await api.GET("/api/v1/auth/me");
check(me.data?.email === creds.email, "me");
check((me.response.headers.get("x-correlation-id") ?? "") !== "", "x-correlation-id");

const key = `ts-${crypto.randomUUID()}`;
const placed = await api.POST("/api/v1/orders", {
  params: { header: { "Idempotency-Key": key } },
  body: order(1250, 2),
});
check(placed.response.status === 201 && placed.data?.status === "PENDING", "create");
const first = placed.data;
const retried = await api.POST("/api/v1/orders", {
  params: { header: { "Idempotency-Key": key } },
  body: order(1250, 2),
});
check(retried.data?.order_id === first.order_id, "the same key, the same order");
const reused = await api.POST("/api/v1/orders", {
  params: { header: { "Idempotency-Key": key } },
  body: order(99),
});
check(reused.error?.error.code === "idempotency_key_reused", "a key reused with another body");

const paid = await wait(first.order_id, "CONFIRMED");
check(paid.saga_state === "COMPLETED" && paid.total_amount === 2500, "confirmed");
const age = Date.now() - Date.parse(paid.created_at);
check(age >= -1000 && age < 300_000, `created_at ${paid.created_at}`);

const declined = await api.POST("/api/v1/orders", { body: order(1_000_000) });
check(declined.data !== undefined, "over-balance order placed");
const refused = await wait(declined.data.order_id, "CANCELLED");
check(refused.saga_state === "FAILED" && !!refused.failure_reason, "cancelled, compensated");

const page = await api.GET("/api/v1/orders", { params: { query: { limit: 1 } } });
check(page.data?.orders.length === 1 && typeof page.data.next_cursor === "string", "page 1");
const rest = await api.GET("/api/v1/orders", {
  params: { query: { limit: 100, cursor: page.data.next_cursor } },
});
check(rest.data?.orders.length === 1 && rest.data.next_cursor === null, "page 2");
const tooMany = await api.GET("/api/v1/orders", { params: { query: { limit: 101 } } });
check(tooMany.error?.error.code === "validation_failed", "limit 101");

const wallet = await api.GET("/api/v1/wallet");
check(wallet.data?.balance === 100_000 - 2500 && wallet.data.currency === "USD", "wallet");
const limit = Number(wallet.response.headers.get("x-ratelimit-limit"));
check(Number.isInteger(limit) && limit > 0, "x-ratelimit-limit");

const accepted = await api.POST("/api/v1/orders/{id}/cancel", {
  params: { path: { id: first.order_id } },
});
check(accepted.response.status === 202, "cancel");
await wait(first.order_id, "CANCELLED");
const twice = await api.POST("/api/v1/orders/{id}/cancel", {
  params: { path: { id: first.order_id } },
});
check(twice.error?.error.code === "conflict", "cancel twice");

const out = await api.POST("/api/v1/auth/logout");
check(out.response.status === 204, "logout");
const revoked = await api.GET("/api/v1/auth/me");
check(revoked.error?.error.code === "token_revoked", "a revoked token");
const challenge = revoked.response.headers.get("www-authenticate") ?? "";
check(challenge.includes('error="invalid_token"'), `WWW-Authenticate: ${challenge}`);
console.log("typescript client: the whole flow, typed");
