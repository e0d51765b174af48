"""Merge a LoRA adapter into its base model, reloaded in full precision, and check the logits match.

Examples:

  slmkit merge --base smollm2-135m-instruct --adapter adapter/ --out merged/

  slmkit merge --adapter runs/demo/03_finetune/adapter --out merged/   (base read from the adapter)

  slmkit merge --recipe demo
"""

from __future__ import annotations

from slmkit.cli.config_flags import Flag, stage_command

NAME = "merge"

# What the verb adds to the flags made from MergeConfig (one per field).
FLAGS = {
    "base": Flag("-b"),
    "adapter": Flag("-a"),
}

command = stage_command(NAME, FLAGS, out_help="output folder for the merged HF model", doc=__doc__)
