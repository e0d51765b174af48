"""Generate the demo agent workflow's tasks: refund tickets with the shop's state and the ground truth.

    python scripts/make_agent_data.py          # writes recipes/data/agent_tasks.jsonl

Seeded, so the committed file is exactly what this script writes (tests/test_agent_data.py checks it). Each
task is one customer message about one order, the shop's orders (that one among others), and what a correct
resolution leaves behind: the refund of the amount the policy allows, or an escalation, and a reply sent.
The ground truth comes from the tools' own policy table (slmkit.recipes.support_tools.refund_policy).

Six kinds, equally often: a full refund (delivered within 30 days), a half refund (31-60 days), too late, a
final-sale item, an order already refunded (these three escalate), and an order id that does not exist (the
lookup fails; escalate). The message wording, names, products, prices and distractor orders vary.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from slmkit.recipes.support_tools import refund_policy

PRODUCTS = ["CloudSync", "PayFlow", "DataVault", "MailPilot", "TaskHub"]
NAMES = ["Maria Lopez", "John Smith", "Aisha Khan", "Wei Chen", "Lukas Becker", "Sofia Rossi", "Omar Haddad",
         "Emma Johnson", "Ravi Patel", "Chloe Martin", "Diego Garcia", "Hannah Novak"]
# kind -> (days since delivery range, order flags); "unknown" asks about an id the shop does not have.
KINDS = {
    "full_refund": ((1, 30), {}),
    "half_refund": ((31, 60), {}),
    "too_late": ((61, 200), {}),
    "final_sale": ((1, 30), {"final_sale": True}),
    "already_refunded": ((1, 30), {"refunded": True}),
    "unknown_order": ((1, 30), {}),
}
OPENINGS = ["Hi,", "Hello,", "Dear support,", "Hey there,", "Good morning,"]
PROBLEMS = ["{p} stopped working after a week", "{p} is not what I expected", "I was charged for {p} but never "
            "used it", "{p} keeps crashing", "the {p} licence I bought is useless for my team"]
ASKS = ["Can I get a refund for order {o}?", "Please refund order {o}.", "I'd like my money back for order {o}.",
        "Could you refund {o}, please?", "Refund request for order {o}."]


def order_id(rng: random.Random) -> str:
    return f"ORD-{rng.randrange(10000, 100000)}"


def make_task(i: int, kind: str, rng: random.Random) -> dict:
    (lo, hi), flags = KINDS[kind]
    name, product = rng.choice(NAMES), rng.choice(PRODUCTS)
    orders: dict[str, dict] = {}
    n_distractors = rng.randint(2, 4)
    while len(orders) < n_distractors:  # distractors: the same customer's and others' orders
        orders[order_id(rng)] = {"customer": rng.choice(NAMES), "product": rng.choice(PRODUCTS),
                                 "price": round(rng.uniform(9, 300), 2),
                                 "days_since_delivery": rng.randint(1, 200), "final_sale": False, "refunded": False}
    asked = order_id(rng)
    while asked in orders:
        asked = order_id(rng)
    order = {"customer": name, "product": product, "price": round(rng.uniform(9, 300), 2),
             "days_since_delivery": rng.randint(lo, hi), "final_sale": False, "refunded": False, **flags}
    if kind != "unknown_order":
        orders[asked] = order
    orders = dict(sorted(orders.items()))
    request = " ".join([rng.choice(OPENINGS), f"this is {name}.", rng.choice(PROBLEMS).format(p=product) + ".",
                        rng.choice(ASKS).format(o=asked)])
    policy = refund_policy(order) if kind != "unknown_order" else {"eligible": False}
    refunds = [{"order_id": asked, "amount": policy["max_refund"]}] if policy["eligible"] else []
    expected_calls = [{"name": "lookup_order", "arguments": {"order_id": asked}}]
    if kind != "unknown_order":
        expected_calls.append({"name": "check_refund_policy", "arguments": {"order_id": asked}})
    expected_calls.append({"name": "issue_refund", "arguments": refunds[0]} if refunds
                          else {"name": "escalate", "arguments": {"order_id": asked}})
    expected_calls.append({"name": "send_reply", "arguments": {}})
    return {
        "id": f"support-{i:03d}", "kind": kind, "request": request,
        "initial_state": {"orders": orders, "refunds": [], "escalations": [], "replies": [], "replied": False},
        "expected_state": {"refunds": refunds, "escalations": [] if refunds else [asked], "replied": True},
        "expected_calls": expected_calls,
    }


def make_tasks(seed: int = 0, per_kind: int = 4) -> list[dict]:
    rng = random.Random(seed)
    kinds = [k for _ in range(per_kind) for k in KINDS]
    return [make_task(i, kind, rng) for i, kind in enumerate(kinds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "recipes" / "data")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tasks = make_tasks(a.seed)
    (a.out / "agent_tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    print(f"wrote {len(tasks)} tasks to {a.out / 'agent_tasks.jsonl'}")


if __name__ == "__main__":
    main()
