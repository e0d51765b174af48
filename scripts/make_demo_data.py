"""Generate the demo's raw data: support tickets to turn into JSON, messy on purpose, with ground truth.

    python scripts/make_demo_data.py            # writes recipes/data/tickets_raw.jsonl and tickets_eval.jsonl

Seeded, so the committed files are exactly what this script writes (a test checks it). The pile holds
in-domain tickets in free-form wording, exact duplicates, near duplicates (a typo, a changed greeting),
off-domain noise (recipes, weather chatter, spam), and the eval set is held out with its ground truth.

The task is harder than "copy four fields": the product is written in varied case and spacing, the urgency
must be inferred from the wording, the order id is optional and sits among distractor numbers (phone numbers,
amounts, dates), and refund_requested must be read from the request.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PRODUCTS = {  # canonical name -> how customers refer to it
    "CloudSync": ["CloudSync", "cloudsync", "Cloud Sync", "CLOUDSYNC"],
    "PayFlow": ["PayFlow", "payflow", "Pay Flow", "PAYFLOW"],
    "DataVault": ["DataVault", "datavault", "Data Vault", "DATAVAULT"],
    "MailPilot": ["MailPilot", "mailpilot", "Mail Pilot", "MAILPILOT"],
    "TaskHub": ["TaskHub", "taskhub", "Task Hub", "TASKHUB"],
}
FIRST = ["Maria", "John", "Aisha", "Wei", "Lukas", "Sofia", "Omar", "Emma", "Ravi", "Chloe", "Diego", "Hannah",
         "Kenji", "Fatima", "Piotr", "Grace", "Mateo", "Ingrid", "Samuel", "Leila"]
LAST = ["Lopez", "Smith", "Khan", "Chen", "Becker", "Rossi", "Haddad", "Johnson", "Patel", "Martin", "Garcia",
        "Novak", "Tanaka", "Ali", "Kowalski", "Okafor", "Silva", "Berg", "Adeyemi", "Moreau"]

# category -> problem sentences ({p} = product mention)
PROBLEMS = {
    "billing": [
        "I was charged twice for {p} this month.",
        "My invoice for {p} shows the wrong plan, I'm on Basic not Pro.",
        "The renewal price of {p} went up without any notice.",
        "{p} billed my old credit card even though I updated it.",
    ],
    "technical": [
        "{p} crashes every time I open it since the last update.",
        "I can't get {p} to connect, it just spins forever.",
        "Files I saved in {p} yesterday are gone today.",
        "{p} shows error 0x80 when I try to export.",
    ],
    "account": [
        "I can't log into {p}, the password reset email never arrives.",
        "Please change the email address on my account for {p}.",
        "My account for {p} got locked after two login attempts.",
        "How do I add a second user to {p}?",
    ],
    "feature_request": [
        "It would be great if {p} had a dark mode.",
        "Could {p} support exporting to CSV?",
        "Any plans to add a calendar view to {p}?",
        "Please let {p} sync over mobile data too.",
    ],
}
URGENCY = {
    "high": ["This is urgent, our whole team is blocked.", "Please fix ASAP, I have a deadline tomorrow.",
             "URGENT: we are losing money every hour this goes on."],
    "normal": ["Could you take a look when you can?", "Thanks for looking into it.", "Let me know what you find."],
    "low": ["No rush at all, just curious.", "Whenever you get a chance, it's not important.",
            "Low priority, just wanted to mention it."],
}
REFUND = ["I'd like a refund for this.", "Please refund the extra charge.", "I want my money back."]
GREETINGS = ["Hi,", "Hello support,", "Hey there,", "Dear team,", "Good morning,", ""]
SIGN_OFFS = ["Thanks, {n}", "Best regards,\n{n}", "Cheers, {n}", "-- {n}", "{n}"]
DISTRACTORS = [
    "You can call me on +1 555 {a:03d} {b:04d}.",
    "I paid {a}.{b:02d} EUR on the 12th.",
    "My account was opened in 20{a:02d}.",
    "Ticket #{a}{b} from last week was closed without an answer.",
]
NOISE = [
    "Recipe: mix two cups of flour with one egg, bake for 20 minutes at 180C.",
    "The weather in Lisbon will be sunny with highs of 24 degrees this weekend.",
    "CONGRATULATIONS!!! You have WON a free cruise, click here to claim now!!!",
    "Minutes of the book club: we discussed chapter four and agreed to meet on Friday.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "Top 10 hiking trails in the Alps, ranked by difficulty and view.",
]

INSTRUCTION = ("Extract the support ticket below as JSON with keys customer_name, product (one of CloudSync, "
               "PayFlow, DataVault, MailPilot, TaskHub), urgency (high, normal or low), order_id (like "
               "ORD-12345, or null) and refund_requested (true or false). Answer with the JSON only.")


def ticket(rng: random.Random) -> dict:
    product = rng.choice(list(PRODUCTS))
    category = rng.choice(list(PROBLEMS))
    urgency = rng.choices(["high", "normal", "low"], weights=[3, 5, 2])[0]
    if category == "feature_request":
        urgency = rng.choice(["normal", "low"])
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    refund = category == "billing" and rng.random() < 0.6
    order_id = f"ORD-{rng.randint(10000, 99999)}" if rng.random() < 0.55 else None
    parts = [rng.choice(GREETINGS)]
    parts.append(rng.choice(PROBLEMS[category]).format(p=rng.choice(PRODUCTS[product])))
    if order_id:
        parts.append(rng.choice([f"My order number is {order_id}.", f"(order {order_id})",
                                 f"This is about order {order_id}.", f"Ref: {order_id}"]))
    if rng.random() < 0.6:
        parts.append(rng.choice(DISTRACTORS).format(a=rng.randint(1, 99), b=rng.randint(0, 99)))
    if refund:
        parts.append(rng.choice(REFUND))
    parts.append(rng.choice(URGENCY[urgency]))
    parts.append(rng.choice(SIGN_OFFS).format(n=name))
    text = "\n".join(p for p in parts if p)
    # The category shapes the wording but is not asked for: the teacher models at hand do no better than
    # chance on it (checked: 15/40 with 8 shots), so it would teach the student noise.
    answer = {"customer_name": name, "product": product, "urgency": urgency, "order_id": order_id,
              "refund_requested": refund}
    return {"ticket": text, "answer": answer}


# The router's traffic also holds tickets in French, German and Spanish: customers of an English helpdesk who
# write in their own language, which the student (tuned on English tickets only) has never seen. Same fields,
# same ground truth; whether the SLM or the remote model reads them better is what route measures.
FOREIGN = {
    "fr": {
        "problems": {
            "billing": ["{p} m'a facturé deux fois ce mois-ci.", "Ma facture {p} indique le mauvais forfait.",
                        "{p} a débité mon ancienne carte bancaire."],
            "technical": ["{p} plante à chaque ouverture depuis la dernière mise à jour.",
                          "Je n'arrive pas à connecter {p}, ça tourne dans le vide.",
                          "Les fichiers enregistrés hier dans {p} ont disparu."],
            "account": ["Je ne peux pas me connecter à {p}, l'e-mail de réinitialisation n'arrive jamais.",
                        "Merci de changer l'adresse e-mail de mon compte {p}."],
            "feature_request": ["Ce serait bien que {p} ait un mode sombre.", "{p} pourrait-il exporter en CSV ?"],
        },
        "urgency": {"high": ["C'est urgent, toute notre équipe est bloquée.", "URGENT : nous perdons de l'argent."],
                    "normal": ["Pouvez-vous regarder quand vous pourrez ?", "Merci de vous en occuper."],
                    "low": ["Rien de pressé, simple curiosité.", "Pas prioritaire du tout."]},
        "refund": ["Je voudrais être remboursé.", "Merci de me rembourser le montant en trop."],
        "order": ["Mon numéro de commande est {o}.", "(commande {o})", "Réf. : {o}"],
        "greetings": ["Bonjour,", "Madame, Monsieur,", ""],
        "sign_offs": ["Cordialement,\n{n}", "Merci, {n}", "{n}"],
    },
    "de": {
        "problems": {
            "billing": ["{p} hat mir diesen Monat zweimal berechnet.", "Meine Rechnung für {p} zeigt den falschen Tarif.",
                        "{p} hat meine alte Kreditkarte belastet."],
            "technical": ["{p} stürzt seit dem letzten Update bei jedem Start ab.",
                          "Ich bekomme keine Verbindung mit {p}, es lädt endlos.",
                          "Dateien, die ich gestern in {p} gespeichert habe, sind weg."],
            "account": ["Ich kann mich nicht bei {p} anmelden, die E-Mail zum Zurücksetzen kommt nie an.",
                        "Bitte ändern Sie die E-Mail-Adresse meines {p}-Kontos."],
            "feature_request": ["Ein dunkler Modus für {p} wäre toll.", "Könnte {p} nach CSV exportieren?"],
        },
        "urgency": {"high": ["Dringend, unser ganzes Team ist blockiert.", "DRINGEND: wir verlieren jede Stunde Geld."],
                    "normal": ["Könnten Sie sich das ansehen?", "Danke, dass Sie sich darum kümmern."],
                    "low": ["Keine Eile, nur aus Neugier.", "Nicht wichtig, wann immer Sie Zeit haben."]},
        "refund": ["Ich möchte eine Rückerstattung.", "Bitte erstatten Sie den zu viel berechneten Betrag."],
        "order": ["Meine Bestellnummer ist {o}.", "(Bestellung {o})", "Ref.: {o}"],
        "greetings": ["Hallo,", "Sehr geehrte Damen und Herren,", ""],
        "sign_offs": ["Viele Grüße\n{n}", "Danke, {n}", "{n}"],
    },
    "es": {
        "problems": {
            "billing": ["{p} me cobró dos veces este mes.", "Mi factura de {p} muestra el plan equivocado.",
                        "{p} cargó mi tarjeta antigua aunque la actualicé."],
            "technical": ["{p} se cierra cada vez que lo abro desde la última actualización.",
                          "No consigo conectar {p}, se queda cargando.",
                          "Los archivos que guardé ayer en {p} han desaparecido."],
            "account": ["No puedo entrar en {p}, el correo para restablecer la contraseña nunca llega.",
                        "Por favor, cambien el correo de mi cuenta de {p}."],
            "feature_request": ["Sería genial que {p} tuviera modo oscuro.", "¿Podría {p} exportar a CSV?"],
        },
        "urgency": {"high": ["Es urgente, todo nuestro equipo está bloqueado.", "URGENTE: perdemos dinero cada hora."],
                    "normal": ["¿Pueden revisarlo cuando puedan?", "Gracias por mirarlo."],
                    "low": ["Sin prisa, solo curiosidad.", "No es importante, cuando tengan tiempo."]},
        "refund": ["Quiero un reembolso.", "Por favor, devuélvanme el cargo de más."],
        "order": ["Mi número de pedido es {o}.", "(pedido {o})", "Ref.: {o}"],
        "greetings": ["Hola,", "Buenos días,", ""],
        "sign_offs": ["Saludos,\n{n}", "Gracias, {n}", "{n}"],
    },
}


def foreign_ticket(rng: random.Random, lang: str) -> dict:
    """A ticket as `ticket` builds one, written in `lang` from that language's phrase table."""
    words = FOREIGN[lang]
    product = rng.choice(list(PRODUCTS))
    category = rng.choice(list(words["problems"]))
    urgency = rng.choice(["normal", "low"]) if category == "feature_request" else \
        rng.choices(["high", "normal", "low"], weights=[3, 5, 2])[0]
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    refund = category == "billing" and rng.random() < 0.6
    order_id = f"ORD-{rng.randint(10000, 99999)}" if rng.random() < 0.55 else None
    parts = [rng.choice(words["greetings"]), rng.choice(words["problems"][category]).format(p=rng.choice(PRODUCTS[product]))]
    if order_id:
        parts.append(rng.choice(words["order"]).format(o=order_id))
    if refund:
        parts.append(rng.choice(words["refund"]))
    parts.append(rng.choice(words["urgency"][urgency]))
    parts.append(rng.choice(words["sign_offs"]).format(n=name))
    answer = {"customer_name": name, "product": product, "urgency": urgency, "order_id": order_id,
              "refund_requested": refund}
    return {"ticket": "\n".join(p for p in parts if p), "answer": answer}


def route_traffic(seed: int, exclude: set[str], n_english: int = 32, n_foreign: int = 32) -> list[dict]:
    """The router's traffic: new English tickets (in no pile, no eval set) mixed with foreign-language ones,
    shuffled, each with its ground truth and its language (for reports only; the router never sees it)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set(exclude)
    while len(rows) < n_english + n_foreign:
        lang = "en" if len(rows) < n_english else sorted(FOREIGN)[len(rows) % len(FOREIGN)]
        t = ticket(rng) if lang == "en" else foreign_ticket(rng, lang)
        if t["ticket"] not in seen:
            seen.add(t["ticket"])
            rows.append({"prompt": f"{INSTRUCTION}\n\nTicket:\n{t['ticket']}", "ticket": t["ticket"],
                         "answer": t["answer"], "lang": lang})
    rng.shuffle(rows)
    return [{"id": f"r{i:03d}", **r} for i, r in enumerate(rows)]


def near_duplicate(rng: random.Random, text: str) -> str:
    """A copy a real pile would hold: a changed greeting, a typo, extra whitespace."""
    edits = [
        lambda t: t.replace("Hi,", "Hello,", 1) if "Hi," in t else "Hi,\n" + t,
        lambda t: t.replace(" the ", " teh ", 1),
        lambda t: t.replace(".", ". ", 1) + "\n",
        lambda t: t + "\nSent from my phone",
    ]
    return rng.choice(edits)(text)


def build(seed: int = 0, n_train: int = 240, n_eval: int = 40) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    tickets: list[dict] = []
    while len(tickets) < n_train + n_eval:
        t = ticket(rng)
        if t["ticket"] not in seen:
            seen.add(t["ticket"])
            tickets.append(t)
    train, held_out = tickets[:n_train], tickets[n_train:]
    raw: list[dict] = [{"id": f"t{i:04d}", "text": t["ticket"], "source": "helpdesk"} for i, t in enumerate(train)]
    for i in range(n_train // 8):  # exact duplicates
        raw.append({**rng.choice(raw[:n_train]), "id": f"dup{i:03d}"})
    for i in range(n_train // 8):  # near duplicates
        src = rng.choice(raw[:n_train])
        raw.append({"id": f"near{i:03d}", "text": near_duplicate(rng, src["text"]), "source": "helpdesk"})
    for i in range(n_train // 10):  # off-domain noise that landed in the export
        raw.append({"id": f"noise{i:03d}", "text": rng.choice(NOISE), "source": "misc"})
    raw.append({"id": f"leak{0:03d}", "text": held_out[0]["ticket"], "source": "helpdesk"})  # an eval item leaked
    rng.shuffle(raw)
    shots = few_shot_examples(seed + 1)
    evals = [{"id": f"e{i:03d}", "prompt": f"{INSTRUCTION}\n\nTicket:\n{t['ticket']}", "ticket": t["ticket"],
              "answer": t["answer"]} for i, t in enumerate(held_out)]
    return raw, evals, shots


def few_shot_examples(seed: int, n: int = 8) -> list[dict]:
    """Hand-checkable labelled examples for the teacher's prompt (not in the pile, not in the eval set):
    every urgency, with and without an order id and a refund request."""
    rng = random.Random(seed)
    shots: list[dict] = []
    wanted = [(u, o, r) for u in ("high", "normal", "low") for o in (True, False) for r in (True, False)]
    while len(shots) < n:
        t = ticket(rng)
        a = t["answer"]
        key = (a["urgency"], a["order_id"] is not None, a["refund_requested"])
        if key in wanted:
            wanted.remove(key)
            shots.append({"prompt": f"{INSTRUCTION}\n\nTicket:\n{t['ticket']}", "response": json.dumps(a)})
    return shots


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "recipes" / "data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    raw, evals, shots = build(args.seed)
    traffic = route_traffic(args.seed + 2, {r["text"] for r in raw} | {e["ticket"] for e in evals})
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "route_traffic.jsonl", traffic)
    write_jsonl(args.out / "tickets_raw.jsonl", raw)
    write_jsonl(args.out / "tickets_eval.jsonl", evals)
    write_jsonl(args.out / "teacher_shots.jsonl", shots)
    print(f"{len(raw)} raw records, {len(evals)} eval items, {len(shots)} teacher examples, "
          f"{len(traffic)} router traffic items -> {args.out}")


if __name__ == "__main__":
    main()
