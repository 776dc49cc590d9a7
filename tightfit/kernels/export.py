"""Export to ONNX, and the map from torch module paths to the ONNX nodes they became.

One exporter for everything: TorchScript-based ``torch.onnx.export(dynamo=False)``, which names
nodes by module scope (``/features/features.3/Conv``), the handle per-layer quantization needs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import onnx
import torch
from torch import nn

from tightfit.exceptions import CandidateError
from tightfit.task import is_token_input

OPSET = 17
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


@contextlib.contextmanager
def _fd_to(target: IO[bytes], fd: int) -> Iterator[None]:
    """Send what native code writes to file descriptor ``fd`` into ``target`` for a while."""
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        os.dup2(target.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def dynamic_axes(
    example_inputs: tuple[torch.Tensor, ...], input_names: list[str]
) -> dict[str, dict[int, str]]:
    """The batch axis of every input and of the output; and the sequence axis of token inputs
    (``tightfit.task.is_token_input``: ids, masks), so that one file serves any length: the
    hardware profile names the length latency is measured at, the data the one it is scored at."""
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in zip(input_names, example_inputs, strict=True):
        axes[name] = {0: "batch"}
        if is_token_input(tuple(tensor.shape[1:]), tensor.dtype):
            axes[name][1] = "sequence"
    axes["output"] = {0: "batch"}
    return axes


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Iterable[str],
    path: Path,
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis; raise CandidateError on failure."""
    input_names = list(input_names)
    model.eval()
    buffer = io.BytesIO()
    chatter = tempfile.TemporaryFile(
        mode="w+b"
    )  # the exporter prints its IR graph on failure (C++)
    try:
        with warnings.catch_warnings(), torch.no_grad(), _fd_to(chatter, 1):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example_inputs,
                buffer,  # type: ignore[arg-type]  # file-like objects are accepted
                dynamo=False,
                opset_version=OPSET,
                input_names=input_names,
                output_names=["output"],
                dynamic_axes=dynamic_axes(example_inputs, input_names),
                do_constant_folding=True,
            )
    except Exception as e:
        chatter.seek(0)
        logging.getLogger(__name__).debug(
            "export failed; exporter output:\n%s", chatter.read().decode(errors="replace")
        )
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CandidateError(f"ONNX export failed: {type(e).__name__}: {first}") from e
    finally:
        chatter.close()
        model.eval()  # export may flip train mode of submodules (offline-models-data.md §6.4)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return path


def module_of_node(node_name: str) -> list[str]:
    """Module paths enclosing a TorchScript-exported node, outermost first.

    The exporter names scopes by attribute, except children of containers, which carry their
    parent's name: ``/layer1/shortcut/shortcut.0/Conv`` -> ``['layer1', 'layer1.shortcut',
    'layer1.shortcut.0']``; ``/features/features.3/Conv`` -> ``['features', 'features.3']``.
    """
    paths: list[str] = []
    current = ""
    previous = ""
    for part in node_name.split("/")[1:-1]:
        if not part:
            continue
        if previous and part.startswith(previous + "."):
            current = current + part[len(previous) :]  # "shortcut.0" under "...shortcut"
        else:
            current = f"{current}.{part}" if current else part
        previous = part
        paths.append(current)
    return paths


def nodes_by_module(
    model: onnx.ModelProto, ops: Iterable[str] = COMPUTE_OPS
) -> dict[str, list[str]]:
    """Every module path -> the names of its compute nodes (a module owns its submodules' nodes)."""
    ops = set(ops)
    out: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in ops:
            continue
        for scope in module_of_node(node.name):
            out.setdefault(scope, []).append(node.name)
    return out


def node_op_types(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: n.op_type for n in model.graph.node}


def has_constant_weight(model: onnx.ModelProto, node_name: str) -> bool:
    """True if the node is a MatMul whose B input is an initializer (MatMulNBits' condition)."""
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name == node_name:
            return node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits
    return False
