"""A teacher LLM writes the training data (and, where tokenizers match, its token probabilities).

Examples:

  slmkit distill --teacher openai:gpt-4o-mini@https://api.openai.com/v1 --prompts prompts.jsonl --out data/

  slmkit distill --recipe demo
"""

from __future__ import annotations

from slmkit.cli.config_flags import Flag, stage_command

NAME = "distill"

# What the verb adds to the flags made from DistillConfig (one per field).
FLAGS = {
    "teacher": Flag("-t"),
    "prompts": Flag("-p"),
    "mode": Flag("-m", help="generate (answers) or logits (answers + teacher top-k)"),
    "temperature": Flag(help="teacher sampling temperature"),
    "max_tokens": Flag(help="most tokens per answer"),
}

command = stage_command(NAME, FLAGS, out_help="output folder", doc=__doc__)
