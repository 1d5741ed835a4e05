"""torch.onnx's dynamo export with its default optimiser, minus one quadratic search.

``torch.onnx.export(..., dynamo=True, optimize=True)`` runs onnxscript's optimiser:
constant folding and a set of rewrite rules, twice. One rule, ``SlicesSplit``
(``Slice(x, 0:h), Slice(x, h:2h)`` -> ``Split(x)``), has two output nodes, and
onnxscript's matcher finds the second one by brute force: for every ``Slice`` of
the graph it lists every node of the graph and tries every ``Slice`` as the
partner. On SmolLM2-135M's prefill graph (19,000 nodes, 5,000 ``Slice``) that
is 25 million match attempts and 6 of the export's 7 minutes.

Both ``Slice`` nodes of the pattern read the same ``x``, so the partner is always
one of ``x``'s consumers. :class:`SiblingMatcher` looks only there and, when more
than one consumer matches, takes the first in graph order, the one the brute
force would find. The rule, its check, its rewrite and every other pass are
onnxscript's own, so the exported graph is the same (``tests/test_stages.py``
compares it with the stock optimiser's, node for node).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence


def _sibling_matcher_class():
    from onnxscript import ir
    from onnxscript.rewriter.pattern import SimplePatternMatcher

    class SiblingMatcher(SimplePatternMatcher):
        """Two-output-node patterns whose output nodes share their first input: partners among its consumers."""

        def __init__(self, pattern) -> None:
            super().__init__(pattern)
            outputs = pattern.output_nodes
            if len(outputs) != 2 or outputs[0].inputs[0] is not outputs[1].inputs[0]:
                raise ValueError("SiblingMatcher takes patterns of two output nodes that share their first input")

        def match(self, model, graph_or_function, node, *, verbose=0, remove_nodes=True, tracer=None):
            self._tracer = tracer
            self._graph = graph_or_function if isinstance(graph_or_function, ir.Graph) else graph_or_function.graph
            second = self.pattern.output_nodes[1]
            x = node.inputs[0] if node.inputs else None
            wanted = second.op_identifier()
            partners = []
            if x is not None:
                seen = set()
                for use in x.uses():
                    user = use.node
                    if user.graph is not node.graph or id(user) in seen or user.op_identifier() != wanted:
                        continue
                    seen.add(id(user))
                    partners.append(user)
            found = []
            for partner in partners:
                self._init_match(verbose)
                if self._multi_match((node, partner), check_removable=remove_nodes):
                    found.append(partner)
            if len(found) > 1:  # the brute force tries partners in graph order: so do we
                position = {id(n): i for i, n in enumerate(graph_or_function)}
                found.sort(key=lambda n: position[id(n)])
            self._init_match(verbose)
            if not found:
                return self._match.fail("No match found.")
            return self._multi_match((node, found[0]), check_removable=remove_nodes)

    return SiblingMatcher


def _with_sibling_matcher(rule):
    """``rule`` (onnxscript's ``SlicesSplit``) rebuilt with :class:`SiblingMatcher`, as ``RewriteRule.commute`` does."""
    from onnxscript.rewriter.pattern import RewriteRule

    return RewriteRule(
        rule._target_pattern,
        rule._replacement_pattern,
        rule._condition_function,
        _sibling_matcher_class(),
        rule._verbose,
        rule.name,
        rule.remove_nodes,
        rule.graph_pre_visitor,
        rule.graph_post_visitor,
        rule.as_function,
    )


@contextlib.contextmanager
def sibling_slice_split() -> Iterator[None]:
    """Within this block, onnxscript's default rewrite rules use :class:`SiblingMatcher` for ``SlicesSplit``."""
    from onnxscript import rewriter
    from onnxscript.rewriter.rules.common import slice_split_rule

    stock: Sequence = rewriter._DEFAULT_REWRITE_RULES
    if sum(rule is slice_split_rule for rule in stock) != 1:
        raise RuntimeError(
            "onnxscript's default rewrite rules do not hold SlicesSplit once: update lmship.dynamo_export"
        )
    rewriter._DEFAULT_REWRITE_RULES = tuple(
        _with_sibling_matcher(rule) if rule is slice_split_rule else rule for rule in stock
    )
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = stock


def export(module, args: tuple, *, opset: int, input_names: list[str], output_names: list[str]):
    """``torch.onnx.export(module, args, dynamo=True, optimize=True)`` with :func:`sibling_slice_split`."""
    import torch

    with sibling_slice_split(), torch.inference_mode():
        return torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            optimize=True,
        )
