"""Cost per 1M tokens and per month, from prices the recipe states and the speed bench measured.

  endpoint  blended price: (input price x prompt tokens + output price x completion tokens) / all tokens, with
            the token mix this task really has (mean tokens per query as measured)
  local     hardware_usd_per_hour / tokens processed per hour * 1e6, where tokens per hour is
            (prompt + completion tokens per query) / (end-to-end seconds per query) * 3600, one request at a
            time, as measured: a serving stack that batches would do better, so this is an upper bound
  monthly   tokens per query * queries_per_month * price per token
A price the recipe does not give is never guessed: the figure is null and a note says why.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from slmkit.pipelines.core.types import StrictModel


class CostConfig(StrictModel):
    hardware_usd_per_hour: float | None = Field(None, ge=0, description="what the machine running local targets "
                                                                         "costs per hour")
    queries_per_month: int = Field(1_000_000, ge=0, description="query volume for the monthly figure")


def cost_figures(kind: str, price_in: float | None, price_out: float | None, stats: dict[str, Any],
                 cfg: CostConfig) -> dict[str, Any]:
    p, c = stats.get("mean_prompt_tokens"), stats.get("mean_completion_tokens")
    out: dict[str, Any] = {"cost_per_1m_tokens_usd": None, "monthly_cost_usd": None, "cost_basis": None}
    if p is None or c is None or p + c == 0:
        out["cost_basis"] = "no successful requests to measure a token mix"
        return out
    if kind == "openai":
        if price_in is None or price_out is None:
            out["cost_basis"] = "endpoint prices not given (price_input_per_1m, price_output_per_1m)"
            return out
        per_1m = (price_in * p + price_out * c) / (p + c)
        out["cost_basis"] = (f"blended ${price_in}/1M in, ${price_out}/1M out at the measured mix "
                             f"{p:.0f} prompt + {c:.0f} completion tokens per query")
    else:
        e2e = stats.get("mean_e2e_s")
        if cfg.hardware_usd_per_hour is None:
            out["cost_basis"] = "hardware price not given (cost.hardware_usd_per_hour)"
            return out
        if not e2e:
            out["cost_basis"] = "no measured request time"
            return out
        tokens_per_hour = (p + c) / e2e * 3600
        per_1m = cfg.hardware_usd_per_hour / tokens_per_hour * 1e6
        out["cost_basis"] = (f"${cfg.hardware_usd_per_hour}/h at {tokens_per_hour / 3600:.1f} tokens/s processed "
                             f"((prompt + completion tokens) / end-to-end time, one request at a time)")
    out["cost_per_1m_tokens_usd"] = round(per_1m, 6)
    out["monthly_cost_usd"] = round((p + c) * cfg.queries_per_month * per_1m / 1e6, 6)
    return out
