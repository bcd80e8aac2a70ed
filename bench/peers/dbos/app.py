"""The order saga on DBOS, written the way DBOS's documentation writes workflows
(the `dbos init` FastAPI template and https://docs.dbos.dev/python/tutorials/workflow-tutorial):
a `@DBOS.workflow` whose steps are `@db.transaction` functions on a Postgres datasource,
each run exactly once and checkpointed in the same transaction, compensation by a
further transaction when a later step fails. Postgres as installed: fsync on,
synchronous_commit on (every commit is flushed before it is acknowledged).

  POST /accounts            {"user","balance"}          -> {}
  GET  /accounts/{user}                                 -> {"balance"}
  POST /orders              {"order_id","user","amount"} -> {"status":"CONFIRMED"|"DECLINED"|"CANCELLED"}
  POST /orders/{id}/cancel                              -> {} (confirmation then fails -> refund)

Environment: DBOS_DATABASE_URL (application data), DBOS_SYSTEM_DATABASE_URL (workflow state).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from dbos import DBOS, DBOSConfig, SetWorkflowID, SQLAlchemyDatasource


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    DBOS.launch()
    try:
        yield
    finally:
        DBOS.destroy()


app = FastAPI(lifespan=lifespan)
config: DBOSConfig = {
    "name": "ordersys-peer-dbos",
    "system_database_url": os.environ["DBOS_SYSTEM_DATABASE_URL"],
    "log_level": "WARNING",
}
DBOS(config=config)
db = SQLAlchemyDatasource.create(os.environ["DBOS_DATABASE_URL"])

with db.engine.begin() as c:
    c.execute(
        sa.text(
            "CREATE TABLE IF NOT EXISTS accounts (user_id TEXT PRIMARY KEY, balance BIGINT NOT NULL)"
        )
    )
    c.execute(
        sa.text(
            "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, user_id TEXT NOT NULL,"
            " amount BIGINT NOT NULL, status TEXT NOT NULL)"
        )
    )


class InsufficientFunds(Exception):
    pass


class Cancelled(Exception):
    pass


@db.transaction
def create_order(order_id: str, user: str, amount: int) -> None:
    db.sql_session().execute(
        sa.text(
            "INSERT INTO orders (order_id, user_id, amount, status) VALUES (:o, :u, :a, 'PENDING')"
        ),
        {"o": order_id, "u": user, "a": amount},
    )


# Step 1: debit, or fail on insufficient funds.
@db.transaction
def debit(user: str, amount: int) -> None:
    row = (
        db.sql_session()
        .execute(
            sa.text(
                "UPDATE accounts SET balance = balance - :a WHERE user_id = :u AND balance >= :a"
                " RETURNING balance"
            ),
            {"u": user, "a": amount},
        )
        .first()
    )
    if row is None:
        raise InsufficientFunds("insufficient funds")


# The compensation of step 1.
@db.transaction
def refund(user: str, amount: int) -> None:
    db.sql_session().execute(
        sa.text("UPDATE accounts SET balance = balance + :a WHERE user_id = :u"),
        {"u": user, "a": amount},
    )


# Step 2: confirm the order — fails if it was cancelled meanwhile.
@db.transaction
def confirm(order_id: str) -> None:
    row = (
        db.sql_session()
        .execute(
            sa.text(
                "UPDATE orders SET status = 'CONFIRMED' WHERE order_id = :o AND status = 'PENDING'"
                " RETURNING order_id"
            ),
            {"o": order_id},
        )
        .first()
    )
    if row is None:
        raise Cancelled("order cancelled before confirmation")


@db.transaction
def set_status(order_id: str, status: str) -> None:
    db.sql_session().execute(
        sa.text("UPDATE orders SET status = :s WHERE order_id = :o"),
        {"o": order_id, "s": status},
    )


@DBOS.workflow()
def order_saga(order_id: str, user: str, amount: int) -> dict:
    create_order(order_id, user, amount)
    try:
        debit(user, amount)
    except InsufficientFunds as e:
        set_status(order_id, "DECLINED")
        return {"status": "DECLINED", "reason": str(e)}
    try:
        confirm(order_id)
    except Cancelled as e:
        refund(user, amount)
        return {"status": "CANCELLED", "reason": str(e)}
    return {"status": "CONFIRMED"}


class NewAccount(BaseModel):
    user: str
    balance: int


class NewOrder(BaseModel):
    order_id: str
    user: str
    amount: int


@app.post("/accounts")
def open_account(a: NewAccount) -> dict:
    with db.engine.begin() as c:
        c.execute(
            sa.text("INSERT INTO accounts (user_id, balance) VALUES (:u, :b)"),
            {"u": a.user, "b": a.balance},
        )
    return {}


@app.get("/accounts/{user}")
def balance(user: str) -> dict:
    with db.engine.connect() as c:
        b = c.execute(
            sa.text("SELECT balance FROM accounts WHERE user_id = :u"), {"u": user}
        ).scalar()
    if b is None:
        raise HTTPException(404, "no such account")
    return {"balance": b}


@app.post("/orders")
def place_order(o: NewOrder) -> dict:
    # The order id is the workflow id: a retried request joins the same saga.
    with SetWorkflowID(o.order_id):
        return order_saga(o.order_id, o.user, o.amount)


@app.post("/orders/{order_id}/cancel")
def cancel(order_id: str) -> dict:
    with db.engine.begin() as c:
        c.execute(
            sa.text(
                "UPDATE orders SET status = 'CANCELLED' WHERE order_id = :o AND status = 'PENDING'"
            ),
            {"o": order_id},
        )
    return {}
