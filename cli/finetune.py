"""Fine-tune a base model on the domain data with LoRA or QLoRA; resumes from its last checkpoint.

Examples:

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --max-steps 100

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --method qlora --save-every 10

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --processes 2

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --set finetune.lora.alpha=64

  slmkit finetune --recipe demo --set finetune.learning_rate=1e-4
"""

from __future__ import annotations

from slmkit.cli.config_flags import Flag, stage_command

NAME = "finetune"

# What the verb adds to the flags made from FinetuneConfig (one per field, e.g. --max-steps, --no-packing).
FLAGS = {
    "model": Flag("-m"),
    "data": Flag("-d"),
    "method": Flag(help="lora, or qlora (bitsandbytes NF4, double quant)"),
    "learning_rate": Flag("--lr", help="peak learning rate"),
    "lora.r": Flag("--lora-r"),
    "grad_accum": Flag(help="gradient accumulation steps"),
}

command = stage_command(NAME, FLAGS, out_help="output folder for the adapter", doc=__doc__)
