"""The host tables of the generation graphs (rule ``host_tables``): what the host loop needs besides
the graphs, written once per model (see :mod:`lmship.decode_graph`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def main(argv: list[str] | None = None) -> None:
    from .cli import config_default, parser
    from .logs import log_to

    p = parser("host_tables", host_tables.__doc__ or "")
    p.add_argument("--model", type=Path, required=True, help="prepared HF folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompt-len", type=int, default=config_default("generation", "prompt_tokens"))
    p.add_argument("--max-len", type=int, default=config_default("generation", "max_len"))
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        host_tables(args.model, args.out, prompt_len=args.prompt_len, max_len=args.max_len)
