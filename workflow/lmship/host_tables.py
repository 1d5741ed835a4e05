"""The host tables of the generation graphs (rule ``host_tables``): what the host loop needs besides
the graphs, written once per model (see :mod:`lmship.decode_graph`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cli import command
from .decode_graph import MASK_NEG, check_lengths, host_rows, load
from .files import atomic_output


def host_tables(hf_dir: Path, out_npz: Path, *, prompt_len: int, max_len: int) -> Path:
    """Write what the host loop needs besides the graphs: the per-position rows, the graphs' inputs
    and cache layout (:class:`GraphIO`) and the model's dimensions."""
    model, plan = load(Path(hf_dir), max_len=max_len)
    check_lengths(prompt_len, max_len, getattr(model.config, "max_position_embeddings", None))
    io = plan.io(max_len)
    rows = host_rows(model, plan, max_len)
    eos = model.config.eos_token_id
    with atomic_output(Path(out_npz)) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            **rows,
            **io.to_host(),
            model_type=np.array(plan.family.model_type),
            prompt_len=prompt_len,
            max_len=max_len,
            mask_neg=np.float32(MASK_NEG),
            eos=-1 if eos is None else np.asarray(eos).reshape(-1)[0],
            **plan.dims(),
        )
    return Path(out_npz)


#: ``python -m lmship host_tables``: its options are the function's parameters.
main = command(
    host_tables, config={"prompt_len": ("generation", "prompt_tokens"), "max_len": ("generation", "max_len")}
)
