"""The whole REST flow through a Python client generated from the OpenAPI document
(openapi-python-client): typed end to end, checked with `mypy --strict`, no cast.

Usage: python flow.py BASE_URL   (scripts/api-clients runs it)
"""

import datetime
import sys
import time
import uuid

from ordersys_client import AuthenticatedClient, Client
from ordersys_client.api.auth import login, logout, me, register
from ordersys_client.api.orders import cancel, create, get, list_, wallet
from ordersys_client.models import (
    CreateBody,
    Credentials,
    ErrorBody,
    ErrorCode,
    ItemBody,
    OrderBody,
    OrderStatus,
    Page,
    Registered,
    SagaState,
    Token,
    WalletBody,
)


def order(unit_price: int, quantity: int = 1) -> CreateBody:
    return CreateBody(
        items=[ItemBody(product_id="book", quantity=quantity, unit_price=unit_price)],
        currency="USD",
    )


def wait(api: AuthenticatedClient, order_id: str, want: OrderStatus) -> OrderBody:
    deadline = time.monotonic() + 60
    while True:
        o = get.sync(client=api, id=order_id)
        assert isinstance(o, OrderBody), o
        if o.status == want:
            return o
        assert time.monotonic() < deadline, f"order {order_id} stayed {o.status}"
        time.sleep(0.05)


def main(base: str) -> None:
    public = Client(base_url=base)
    creds = Credentials(email=f"py-{uuid.uuid4().hex}@example.com", password="python-password-1")
    registered = register.sync_detailed(client=public, body=creds)
    assert registered.status_code == 201 and isinstance(registered.parsed, Registered)
    again = register.sync(client=public, body=creds)
    assert isinstance(again, ErrorBody) and again.error.code == ErrorCode.CONFLICT, again
    token = login.sync(client=public, body=creds)
    assert isinstance(token, Token) and token.token_type == "Bearer", token
    api = AuthenticatedClient(base_url=base, token=token.access_token)
    who = me.sync(client=api)
    assert isinstance(who, Registered) and who.email == creds.email

    key = f"py-{uuid.uuid4().hex}"
    placed = create.sync_detailed(client=api, body=order(1250, 2), idempotency_key=key)
    assert placed.status_code == 201 and isinstance(placed.parsed, OrderBody), placed
    first = placed.parsed
    assert first.status == OrderStatus.PENDING
    retried = create.sync(client=api, body=order(1250, 2), idempotency_key=key)
    assert isinstance(retried, OrderBody) and retried.order_id == first.order_id
    reused = create.sync(client=api, body=order(99), idempotency_key=key)
    assert isinstance(reused, ErrorBody) and reused.error.code == ErrorCode.IDEMPOTENCY_KEY_REUSED

    paid = wait(api, first.order_id, OrderStatus.CONFIRMED)
    assert paid.saga_state == SagaState.COMPLETED and paid.total_amount == 2500
    age = datetime.datetime.now(datetime.timezone.utc) - paid.created_at
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5), paid.created_at

    declined = create.sync(client=api, body=order(1_000_000))
    assert isinstance(declined, OrderBody)
    refused = wait(api, declined.order_id, OrderStatus.CANCELLED)
    assert refused.saga_state == SagaState.FAILED and refused.failure_reason

    page = list_.sync(client=api, limit=1)
    assert isinstance(page, Page) and len(page.orders) == 1 and isinstance(page.next_cursor, str)
    rest = list_.sync(client=api, limit=100, cursor=page.next_cursor)
    assert isinstance(rest, Page) and len(rest.orders) == 1 and rest.next_cursor is None
    too_many = list_.sync(client=api, limit=101)
    assert isinstance(too_many, ErrorBody) and too_many.error.code == ErrorCode.VALIDATION_FAILED

    w = wallet.sync(client=api)
    assert isinstance(w, WalletBody) and w.balance == 100_000 - 2500 and w.currency == "USD"

    accepted = cancel.sync_detailed(client=api, id=first.order_id)
    assert accepted.status_code == 202 and isinstance(accepted.parsed, OrderBody)
    wait(api, first.order_id, OrderStatus.CANCELLED)
    twice = cancel.sync(client=api, id=first.order_id)
    assert isinstance(twice, ErrorBody) and twice.error.code == ErrorCode.CONFLICT

    out = logout.sync_detailed(client=api)
    assert out.status_code == 204
    revoked = me.sync_detailed(client=api)
    assert revoked.status_code == 401 and isinstance(revoked.parsed, ErrorBody)
    assert revoked.parsed.error.code == ErrorCode.TOKEN_REVOKED
    print("python client: the whole flow, typed")


if __name__ == "__main__":
    main(sys.argv[1])
