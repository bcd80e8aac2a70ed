// The order saga on Restate, written the way Restate's documentation writes sagas
// (https://docs.restate.dev/guides/sagas): a workflow per order, whose steps are calls
// to a virtual object per user holding the balance, and a list of compensations run in
// reverse when a later step fails terminally. Every state change is journaled by the
// Restate server (RocksDB WAL, fsync per write batch by default).
//
//   POST /Account/{user}/open     <initial balance>      → null
//   POST /Account/{user}/balance                         → balance
//   POST /OrderSaga/{order}/run   {"user","amount"}      → {"status":"CONFIRMED"|"DECLINED"|"CANCELLED"}
//   POST /OrderSaga/{order}/cancel                       → null (confirmation then fails → refund)
import * as restate from "@restatedev/restate-sdk";

// The SDK uses Promise.withResolvers (Node.js 22); this machine has Node.js 20.
Promise.withResolvers ??= function withResolvers() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
};

const account = restate.object({
  name: "Account",
  handlers: {
    open: async (ctx, balance) => {
      ctx.set("balance", balance);
    },
    // Step 1: debit, or fail terminally on insufficient funds (no retry, no compensation).
    debit: async (ctx, amount) => {
      const balance = (await ctx.get("balance")) ?? 0;
      if (balance < amount) {
        throw new restate.TerminalError("insufficient funds");
      }
      ctx.set("balance", balance - amount);
      return balance - amount;
    },
    // The compensation of step 1.
    refund: async (ctx, amount) => {
      const balance = (await ctx.get("balance")) ?? 0;
      ctx.set("balance", balance + amount);
      return balance + amount;
    },
    balance: restate.handlers.object.shared(async (ctx) => (await ctx.get("balance")) ?? 0),
  },
});

const orderSaga = restate.workflow({
  name: "OrderSaga",
  handlers: {
    run: async (ctx, { user, amount }) => {
      ctx.set("status", "PENDING");
      const compensations = [];
      try {
        // Step 1: debit the user's account (a call to its virtual object: one at a time per user).
        try {
          await ctx.objectClient(account, user).debit(amount);
        } catch (e) {
          if (e instanceof restate.TerminalError) {
            ctx.set("status", "DECLINED");
            return { status: "DECLINED", reason: e.message };
          }
          throw e;
        }
        compensations.push(() => ctx.objectClient(account, user).refund(amount));
        // Step 2: confirm the order durably — fails if it was cancelled meanwhile.
        if ((await ctx.promise("cancel").peek()) !== undefined) {
          throw new restate.TerminalError("order cancelled before confirmation");
        }
        ctx.set("status", "CONFIRMED");
        return { status: "CONFIRMED" };
      } catch (e) {
        if (e instanceof restate.TerminalError) {
          for (const compensate of compensations.reverse()) {
            await compensate();
          }
          ctx.set("status", "CANCELLED");
          return { status: "CANCELLED", reason: e.message };
        }
        throw e;
      }
    },
    cancel: async (ctx) => {
      await ctx.promise("cancel").resolve(true);
    },
    status: async (ctx) => (await ctx.get("status")) ?? "UNKNOWN",
  },
});

restate.serve({ services: [account, orderSaga], port: Number(process.env.PORT ?? 9080) });
