"""The demo agent workflow's tools: resolving a support ticket about a refund (recipes/data/agent_support.yaml).

Each tool takes the task's `state` (the shop's orders and what has been done: refunds, escalations, replies)
and changes it as a real back office would; a task is scored on the state it leaves. Schemas come from the type
hints and the `Args:` lines. The refund policy is one table, so the data script (scripts/make_agent_data.py)
and the tools cannot disagree about it.
"""

from __future__ import annotations

# Days since delivery -> the share of the price refunded, first row that fits; past the last row, no refund.
REFUND_WINDOWS = ((30, 1.0, "delivered within 30 days: full refund"),
                  (60, 0.5, "delivered 31-60 days ago: half the price is refunded"))
NOT_ELIGIBLE = {
    "refunded": "the order was already refunded",
    "final_sale": "final-sale items are not refundable",
    "late": "delivered more than 60 days ago: outside the refund window",
}


def _order(state: dict, order_id: str) -> dict:
    order = state["orders"].get(order_id)
    if order is None:
        raise KeyError(f"no order with id {order_id}")
    return order


def lookup_order(state: dict, order_id: str) -> dict:
    """Look up an order: its customer, product, price in EUR, days since delivery and whether it was refunded.

    Args:
        order_id: the order's id, like ORD-12345
    """
    return {"order_id": order_id, **_order(state, order_id)}


def refund_policy(order: dict) -> dict:
    """The policy's answer for one order (shared by the tool and the data script's ground truth)."""
    for flag in ("refunded", "final_sale"):
        if order.get(flag):
            return {"eligible": False, "max_refund": 0.0, "reason": NOT_ELIGIBLE[flag]}
    for days, share, reason in REFUND_WINDOWS:
        if order["days_since_delivery"] <= days:
            return {"eligible": True, "max_refund": round(order["price"] * share, 2), "reason": reason}
    return {"eligible": False, "max_refund": 0.0, "reason": NOT_ELIGIBLE["late"]}


def check_refund_policy(state: dict, order_id: str) -> dict:
    """Check whether an order may be refunded and the most that may be refunded, in EUR.

    Args:
        order_id: the order's id, like ORD-12345
    """
    return refund_policy(_order(state, order_id))


def issue_refund(state: dict, order_id: str, amount: float) -> dict:
    """Refund an amount in EUR for an order. Only for orders the refund policy allows, up to its maximum.

    Args:
        order_id: the order's id, like ORD-12345
        amount: the amount to refund in EUR
    """
    order = _order(state, order_id)
    if order.get("refunded"):
        raise ValueError(f"order {order_id} was already refunded")
    if not 0 < amount <= order["price"]:
        raise ValueError(f"amount {amount} is not between 0 and the price {order['price']}")
    order["refunded"] = True
    state["refunds"].append({"order_id": order_id, "amount": round(float(amount), 2)})
    return {"refunded": round(float(amount), 2), "order_id": order_id}


def escalate(state: dict, order_id: str, reason: str) -> dict:
    """Hand the ticket to a human agent, for anything the refund policy does not allow or an unknown order.

    Args:
        order_id: the order's id as the customer gave it
        reason: why the ticket is escalated
    """
    state["escalations"].append(order_id)
    return {"escalated": order_id, "ticket": f"ESC-{len(state['escalations']):03d}"}


def send_reply(state: dict, message: str) -> dict:
    """Send the customer the reply that closes the ticket.

    Args:
        message: the reply to the customer
    """
    state["replies"].append(message)
    state["replied"] = True
    return {"sent": True}
